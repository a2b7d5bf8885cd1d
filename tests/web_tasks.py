"""The process tasks of the web framework tests, in a module of their own.

A worker imports the module of each function it unpickles by name, and a
test module of a web framework imports pytest, the framework, its server and
an HTTP client: about 1.3 s for each new worker on the test machine.
"""

from __future__ import annotations

import os

import makeparallel as mp
from pool_helpers import Flags


@mp.parallel(backend="process")
def count_primes(limit: int) -> int:
    return sum(all(n % d for d in range(2, int(n**0.5) + 1)) for n in range(2, limit))


@mp.parallel(backend="process")
def wait_until_released(flags: Flags, name: str) -> int:
    """Say it started (its worker's pid in ``started-{name}``), then wait for the test's teardown; its pid."""
    flags.set(f"started-{name}", str(os.getpid()))
    flags.wait_for_release("never", 60)
    return os.getpid()


def refuse_to_start(path: str) -> None:
    """A worker initializer that fails naming ``path``, as one that cannot load a file says."""
    raise RuntimeError(f"cannot load {path}")
