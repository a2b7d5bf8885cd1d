"""Contenders in processes of their own, timed block by block from the benchmark's process.

Process pools measured in one process disturb each other: each pool's threads
and its leftover work after a call (results read, workers going back to wait)
land in the timing of the next call, of another pool. With one call of each
in turn, ``Pool.apply_async``'s round trip took 0.8-2.2 ms at the median beside
makeparallel's pool and a ``ProcessPoolExecutor``, and 0.17-0.36 ms in a
process of its own: the comparison flattered makeparallel. A new ``Pool`` is
also slow at first: ``Pool.map`` of 100 items took 5-8 ms at the median from
0.1 to 0.7 s after the pool was made, 0.7-0.9 ms after. So each contender sets
up its pool in a process of its own (``python SCRIPT --contender NAME ...``)
and is warmed for a second (:meth:`Contender.warm`); then the benchmark's
process asks each in turn for a block of timed calls, so that machine noise
still hits all alike.

The standard library's pools start their workers with ``fork`` unless a
script is told otherwise: their fastest, and safe in a contender's process,
which has no other thread when it makes its pool. With ``forkserver``, a
``Pool``'s timings swung within a run and from run to run (a round trip of
0.2 ms in some blocks, 1-3 ms in others; a burst of 500 no-ops 0.009 to
1.1 s), which makes such a comparison mean little.

A contender answers each request (a JSON array, one line on its standard
input) with one JSON line on its standard output, until its input ends.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Contender", "add_arguments", "serve"]


class Contender:
    """A contender's process: ``python script --contender name *options``, answering one request at a time."""

    def __init__(self, script: str, name: str, options: list[str]) -> None:
        self.name = name
        self._process = subprocess.Popen(
            [sys.executable, script, "--contender", name, *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, *request: Any) -> Any:
        """Send ``request``; return the contender's answer.

        Raises ``RuntimeError`` if its process ended. That is also watched for
        while waiting: a ``ProcessPoolExecutor``'s workers, orphaned when their
        parent was killed, keep its output pipe open, so no end of file comes.
        """
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(request) + "\n")
            process.stdin.flush()
        except OSError:  # its end of the pipe is closed: it ended
            raise self._ended() from None
        while not select.select([process.stdout], [], [], 1.0)[0]:
            if process.poll() is not None:
                raise self._ended()
        line = process.stdout.readline()
        if not line:
            raise self._ended()
        return json.loads(line)

    def _ended(self) -> RuntimeError:
        return RuntimeError(f"contender {self.name!r} ended with exit code {self._process.wait()}")

    def warm(self, seconds: float, *request: Any) -> None:
        """Send ``request`` again and again for ``seconds``: a new ``Pool`` answers slowly for its first half second or so."""
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            self.run(*request)

    def close(self) -> None:
        """End its input, then wait for its process to shut its pool down and exit."""
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(60)


def serve(answer: Callable[..., Any]) -> None:
    """In a contender's process: answer each request with ``answer(*request)``, until the input ends."""
    for line in sys.stdin:
        print(json.dumps(answer(*json.loads(line))), flush=True)


def add_arguments(parser: argparse.ArgumentParser, contenders: Iterable[str]) -> None:
    """Add ``--start-method`` (``fork`` by default: see above) and the hidden ``--contender`` that :class:`Contender` passes."""
    parser.add_argument(
        "--start-method", default="fork", choices=multiprocessing.get_all_start_methods(),
        help="for the standard library's pools (default: fork, their fastest)",
    )
    parser.add_argument("--contender", choices=tuple(contenders), help=argparse.SUPPRESS)
