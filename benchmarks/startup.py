"""Start-up costs side by side: ``import makeparallel``, a first task, and the first result of a cold process pool.

Every figure is measured in a fresh interpreter (``subprocess``), rounds
alternating so that machine noise hits all alike; medians are printed, with
ratios (lower is better for makeparallel).

1. import: wall-clock seconds of ``python -c "import X"`` minus those of
   ``python -c "pass"``, for ``makeparallel`` and ``concurrent.futures`` (which
   makeparallel must import, for ``CancelledError``); also the cumulative
   microseconds ``python -X importtime`` reports for each (target: makeparallel at
   most 1.3x ``concurrent.futures``);
2. import and a first task on threads: wall-clock seconds of a program that
   imports the package and runs one task to its result (``@mp.parallel``, then
   ``.get()``; ``ThreadPoolExecutor(2).submit(...).result()``), minus those of
   ``python -c "pass"``: what a short script pays, modules loaded on first use
   included;
3. cold start: seconds from before the pool is created to the first result of a
   no-op task, for ``@mp.parallel(backend="process")``, ``multiprocessing.Pool``
   and ``ProcessPoolExecutor`` with the ``fork``, ``forkserver`` and ``spawn``
   start methods; the task is ``abs``, which every start method can send by
   name. Then the same against ``Pool`` with ``fork`` for a Python function of
   a module (``posixpath.basename``), which both send by name, and for a
   function of ``__main__``, the usual case in a script or a notebook, which
   makeparallel sends by value (cloudpickle, in the parent and in the worker)
   and ``Pool``'s workers have from the fork (``spawn`` and ``forkserver``
   cannot import the ``__main__`` of ``python -c``). Last, a first map of 100
   items (``mp.parallel_map(abs, ...)`` against ``Pool.map`` with ``fork``),
   whose first chunks' workers load what running a chunk needs.

Bytecode is cached, as an installed package has it: this script unsets
``PYTHONDONTWRITEBYTECODE`` (which makes every interpreter compile the package
from source) for its children and imports each module once before timing.

    python benchmarks/startup.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

IMPORTS = {"makeparallel": "import makeparallel", "concurrent.futures": "import concurrent.futures"}
FIRST_TASK = {
    "makeparallel": (
        "import makeparallel as mp\n"
        "@mp.parallel\n"
        "def negate(x):\n"
        "    return -x\n"
        "assert negate(-1).get() == 1\n"
    ),
    "concurrent.futures": (
        "from concurrent.futures import ThreadPoolExecutor\n"
        "with ThreadPoolExecutor(2) as pool:\n"
        "    assert pool.submit(abs, -1).result() == 1\n"
    ),
}

# Each program prints the seconds from pool creation to its first result.
_COLD_PREFIX = "import time\nstart = time.perf_counter()\n"
COLD = {
    "makeparallel (process)": (
        "import makeparallel as mp\n" + _COLD_PREFIX + "print(time.perf_counter() - start"
        " if mp.parallel(backend='process')(abs)(-1).get() == 1 else 'wrong')\n"
    ),
    **{
        f"Pool ({method})": (
            "import multiprocessing\n" + _COLD_PREFIX
            + f"pool = multiprocessing.get_context('{method}').Pool(2)\n"
            "print(time.perf_counter() - start if pool.apply_async(abs, (-1,)).get() == 1 else 'wrong')\n"
            "pool.terminate()\n"
        )
        for method in ("fork", "forkserver", "spawn")
    },
    **{
        f"ProcessPoolExecutor ({method})": (
            "import multiprocessing\nfrom concurrent.futures import ProcessPoolExecutor\n" + _COLD_PREFIX
            + f"pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context('{method}'))\n"
            "print(time.perf_counter() - start if pool.submit(abs, -1).result() == 1 else 'wrong')\n"
            "pool.shutdown()\n"
        )
        for method in ("fork", "forkserver", "spawn")
    },
}


def _cold_against_pool(setup: str, call: str, argument: str, expected: str) -> dict[str, str]:
    """Programs printing the seconds from pool creation to the result of ``call(argument)``, ``setup`` run first."""
    return {
        "makeparallel (process)": (
            "import makeparallel as mp\n" + _COLD_PREFIX + setup + "print(time.perf_counter() - start"
            f" if mp.parallel(backend='process')({call})({argument}).get() == {expected} else 'wrong')\n"
        ),
        "Pool (fork)": (
            "import multiprocessing\n" + _COLD_PREFIX + setup
            + "pool = multiprocessing.get_context('fork').Pool(2)\n"
            f"print(time.perf_counter() - start if pool.apply_async({call}, ({argument},)).get() == {expected}"
            " else 'wrong')\npool.terminate()\n"
        ),
    }


# The same, the task a Python function of a module, which every pool sends by name.
COLD_MODULE = _cold_against_pool("import posixpath\n", "posixpath.basename", "'a/b'", "'b'")
# The same, the task a function of __main__ (only a forked Pool can run it from ``python -c``).
COLD_MAIN = _cold_against_pool("def negate(x):\n    return -x\n", "negate", "-1", "1")
# A first map of 100 items: the first chunks' workers load what running a chunk needs.
COLD_MAP = {
    "makeparallel (process)": (
        "import makeparallel as mp\n" + _COLD_PREFIX + "print(time.perf_counter() - start"
        " if mp.parallel_map(abs, range(-100, 0), backend='process')[0] == 100 else 'wrong')\n"
    ),
    "Pool (fork)": (
        "import multiprocessing\n" + _COLD_PREFIX + "pool = multiprocessing.get_context('fork').Pool(2)\n"
        "print(time.perf_counter() - start if pool.map(abs, range(-100, 0))[0] == 100 else 'wrong')\n"
        "pool.terminate()\n"
    ),
}


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def wall(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env(), stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def importtime(module: str) -> float:
    """The cumulative microseconds ``-X importtime`` reports for ``module``."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        check=True, env=child_env(), capture_output=True, text=True,
    ).stderr
    line = next(line for line in reversed(err.splitlines()) if line.rstrip().endswith(f"| {module}"))
    return float(line.split("|")[1])


def cold(code: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, env=child_env(), capture_output=True, text=True
    ).stdout
    return float(out.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    programs = [
        *IMPORTS.values(), *FIRST_TASK.values(), *COLD.values(), *COLD_MODULE.values(), *COLD_MAIN.values(),
        *COLD_MAP.values(),
    ]
    for code in programs:  # cache bytecode
        wall(code)

    walls: dict[str, list[float]] = {name: [] for name in ["python -c pass", *IMPORTS]}
    cumulative: dict[str, list[float]] = {name: [] for name in IMPORTS}
    first_tasks: dict[str, list[float]] = {name: [] for name in FIRST_TASK}
    firsts: dict[str, list[float]] = {name: [] for name in COLD}
    firsts_module: dict[str, list[float]] = {name: [] for name in COLD_MODULE}
    firsts_main: dict[str, list[float]] = {name: [] for name in COLD_MAIN}
    firsts_map: dict[str, list[float]] = {name: [] for name in COLD_MAP}
    for _ in range(args.rounds):
        walls["python -c pass"].append(wall("pass"))
        for name, code in IMPORTS.items():
            walls[name].append(wall(code))
            cumulative[name].append(importtime(name))
        for name, code in FIRST_TASK.items():
            first_tasks[name].append(wall(code))
        for name, code in COLD.items():
            firsts[name].append(cold(code))
        for name, code in COLD_MODULE.items():
            firsts_module[name].append(cold(code))
        for name, code in COLD_MAIN.items():
            firsts_main[name].append(cold(code))
        for name, code in COLD_MAP.items():
            firsts_map[name].append(cold(code))

    base = statistics.median(walls["python -c pass"])
    imports = {name: statistics.median(walls[name]) - base for name in IMPORTS}
    times = {name: statistics.median(cumulative[name]) for name in IMPORTS}
    print(f"import, median of {args.rounds} fresh interpreters, bytecode cached")
    for name in IMPORTS:
        print(f"  {name:<20} wall {imports[name] * 1e3:6.1f} ms   -X importtime {times[name] / 1e3:6.1f} ms")
    print(
        f"  makeparallel / concurrent.futures: wall {imports['makeparallel'] / imports['concurrent.futures']:.2f}x,"
        f" importtime {times['makeparallel'] / times['concurrent.futures']:.2f}x (target <= 1.3x)"
    )
    tasks = {name: statistics.median(samples) - base for name, samples in first_tasks.items()}
    print(f"\nimport and a first task on threads, median of {args.rounds} fresh interpreters, bytecode cached")
    for name in FIRST_TASK:
        print(f"  {name:<20} wall {tasks[name] * 1e3:6.1f} ms")
    print(f"  makeparallel / concurrent.futures: wall {tasks['makeparallel'] / tasks['concurrent.futures']:.2f}x")
    print(f"\nfirst result from a cold process pool, median of {args.rounds}")
    report_cold(firsts)
    print(f"\nthe same, the task a Python function of a module (posixpath.basename), median of {args.rounds}")
    report_cold(firsts_module)
    print(f"\nthe same, the task a function of __main__, median of {args.rounds}")
    report_cold(firsts_main)
    print(f"\nthe same, a first map of 100 items (parallel_map, Pool.map), median of {args.rounds}")
    report_cold(firsts_map)


def report_cold(firsts: dict[str, list[float]]) -> None:
    ours = statistics.median(firsts["makeparallel (process)"])
    for name, samples in firsts.items():
        median = statistics.median(samples)
        print(f"  {name:<32} {median * 1e3:7.1f} ms   makeparallel takes {ours / median:5.2f}x this")


if __name__ == "__main__":
    main()
