"""The command line: ``makeparallel demo``, ``makeparallel info`` and ``makeparallel --version``.

Also runs as ``python -m makeparallel``. ``demo`` measures, on this machine, what
threads and processes speed up and what they do not, printing each row as it is
measured; ``info`` says what this interpreter and machine offer (GIL, usable
cores, memory, backends, the pools), as text or as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Any, TextIO, cast

import psutil

from . import __version__, get_process_pool_info, get_thread_pool_info
from ._cpus import usable_cpus
from ._memory_budget import memory_budget
from ._demo import free_threaded_build, gil_enabled, run_demo
from ._runtime import available_backend_names, default_backend_name

__all__ = ["collect_info", "main"]


def _memory() -> dict[str, Any]:
    """The memory this process may use: its cgroup's limit, else ``RLIMIT_AS``, else the host's."""
    budget = memory_budget()
    return {"used_bytes": budget.used, "limit_bytes": budget.limit, "source": budget.source}


def collect_info() -> dict[str, Any]:
    """What ``info`` reports, as plain JSON-ready data.

    Reading the pools' info creates their bookkeeping but starts no thread and
    no worker process.

    Raises:
        ValueError: the environment variable ``MAKEPARALLEL_BACKEND`` names no
            backend, or one this Python cannot run (``"interpreter"`` before
            Python 3.14, ``"dask"`` without distributed).
    """
    cpus = usable_cpus()
    return {
        "makeparallel_version": __version__,
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "free_threaded_build": free_threaded_build(),
        "gil_enabled": gil_enabled(),
        "logical_cores": os.cpu_count(),
        "usable_cores": cpus.cpus,
        "usable_cores_source": cpus.source,
        "physical_cores": psutil.cpu_count(logical=False),
        "memory": _memory(),
        "default_backend": default_backend_name(),
        "backends": available_backend_names(),
        "thread_pool": get_thread_pool_info(),
        "process_pool": get_process_pool_info(),
    }


_CPU_SOURCES = {
    "affinity": "this process's CPU affinity",
    "cgroup quota": "the cgroup's CPU quota",
    "cpu_count": "os.cpu_count()",
}


def _gib(size: int) -> str:
    return f"{size / (1 << 30):.1f} GiB"


def _render_info(info: dict[str, Any]) -> str:
    def known(value: object) -> str:
        return "unknown" if value is None else str(value)

    threads = info["thread_pool"]
    processes = info["process_pool"]
    memory = info["memory"]
    rows = [
        ("makeparallel", info["makeparallel_version"]),
        ("python", f"{info['python_version']} ({info['python_implementation']})"),
        ("build", "free-threaded" if info["free_threaded_build"] else "GIL (standard)"),
        ("GIL enabled now", "yes" if info["gil_enabled"] else "no"),
        ("logical cores", known(info["logical_cores"])),
        ("usable cores", f"{info['usable_cores']} (by {_CPU_SOURCES.get(info['usable_cores_source'], info['usable_cores_source'])})"),
        ("physical cores", known(info["physical_cores"])),
        (
            "memory",
            f"{_gib(memory['used_bytes'])} in use of {_gib(memory['limit_bytes'])} "
            f"(source: {memory['source']})",
        ),
        ("default backend", info["default_backend"]),
        ("backends", ", ".join(info["backends"])),
        (
            "thread pool",
            f"{threads['num_threads']} threads ({threads['live_threads']} started, "
            f"{threads['busy_threads']} busy), {threads['queued_tasks']} tasks queued",
        ),
        (
            "process pool",
            f"{processes['num_workers']} workers ({processes['live_workers']} ready, "
            f"{processes['busy_workers']} busy), {processes['queued_tasks']} tasks queued, "
            f"{processes['worker_restarts']} restarts",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _info(arguments: argparse.Namespace) -> int:
    try:
        info = collect_info()
    except ValueError as error:  # a bad MAKEPARALLEL_BACKEND: say so, no traceback
        _say(f"makeparallel info: error: {error}")
        return 1
    print(json.dumps(info, indent=2) if arguments.json else _render_info(info), file=arguments.out)
    return 0


def _demo(arguments: argparse.Namespace) -> int:
    run_demo(quick=arguments.quick, out=cast(TextIO, arguments.out))
    return 0


class _OutputRefused(Exception):
    """Standard output refused a write (full, or not open for writing): the ``OSError`` is the cause."""


class _Output:
    """Standard output as the commands write to it: a write it refuses raises :class:`_OutputRefused`.

    So the command line tells that failure from any other ``OSError`` and
    names it. A closed pipe stays ``BrokenPipeError``, which ends the
    command quietly. ``None`` (descriptor 1 closed as Python started)
    takes every write and keeps nothing, as ``print()`` does there.
    """

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if self._stream is None:
            return len(text)
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as error:
            raise _OutputRefused(error) from error

    def flush(self) -> None:
        if self._stream is None:
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as error:
            raise _OutputRefused(error) from error

    def isatty(self) -> bool:
        return self._stream is not None and self._stream.isatty()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="makeparallel",
        description="Run Python functions in parallel on one machine: tools for this machine.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="measure what threads speed up here (GIL-releasing vs pure-Python work)",
        description="Time two workloads sequentially and with @parallel, and explain the speed-ups.",
    )
    demo.add_argument(
        "--quick", action="store_true", help="tiny sizes, one round: a smoke test, not a measurement"
    )
    demo.set_defaults(run=_demo)
    info = commands.add_parser(
        "info",
        help="show the Python build, the GIL, the cores, memory, backends and pools",
        description="Show what this interpreter and machine offer to makeparallel.",
    )
    info.add_argument("--json", action="store_true", help="print the same as a JSON object")
    info.set_defaults(run=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    A reader that stops reading (``makeparallel info | head -1``) ends the
    command with code 1 and no traceback, as Python's documentation advises
    for a closed pipe. An output that refuses a write otherwise (a full
    disk, ``>/dev/full``; a descriptor open for reading only) ends it with
    code 1 and one line on standard error that names the error, as ``ls``
    does there, and no traceback. With standard output closed as it starts
    (``makeparallel info >&-``), it prints nothing, as ``print()`` does there. Ctrl-C ends it with code 130 (128 + ``SIGINT``, as a
    shell reports a command that Ctrl-C ended) and a line on standard error
    saying so: not with a traceback through the library, and the demo's
    tasks cancelled, so that exit neither waits for them nor warns of them.

    Raises:
        SystemExit: with code 2 on a usage error (argparse prints the usage);
            with code 0 after ``--help`` or ``--version`` (``makeparallel 0.3.0``)
            printed what they print.
    """
    arguments = _parser().parse_args(argv)
    # sys.stdout is None where descriptor 1 was closed as Python started: print() writes nothing there.
    arguments.out = _Output(sys.stdout)
    try:
        code = int(arguments.run(arguments))
        arguments.out.flush()  # here, where a failure can be caught, not at exit, where Python prints it as ignored
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except _OutputRefused as refused:
        # Silenced too: what it kept unwritten, flushed again at exit, failed again with Python's own message.
        _silence_stdout()
        _say(f"makeparallel {arguments.command}: error: cannot write to standard output: {refused.__cause__}")
        return 1
    except KeyboardInterrupt:
        _say(f"makeparallel {arguments.command}: interrupted")
        return 130
    return code


def _say(line: str) -> None:
    """Write ``line`` to standard error, if it takes it: the command's last word, which must not fail with a traceback."""
    if sys.stderr is None:  # descriptor 2 closed as Python started (print() would write to stdout)
        return
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # full, or closed
        pass


def _silence_stdout() -> None:
    """Point standard output at the null device: Python flushes it once more at exit, which would fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # a stdout with no descriptor of its own: nothing is flushed to a pipe at exit
        pass


if __name__ == "__main__":
    raise SystemExit(main())
