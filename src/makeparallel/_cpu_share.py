"""This process's share of the CPUs, where it is a worker of a ``"process"`` pool.

The parent sends each worker ``max(1, its usable CPUs // the pool's workers)``
in its set-up message, and :func:`makeparallel._cpus.usable_cpus` reports it
there, so the pools a task starts fit the worker's share. Apart from ``_cpus``,
which imports ``typing`` (with ``re`` and ``enum``): a worker takes its share
before its first task and imports none of them until a task needs one.
"""

from __future__ import annotations

__all__ = ["pool_thread_limits", "set_pool_thread_limits", "set_worker_share", "worker_share"]

_share: int | None = None  # None: no worker, or a worker told nothing
# The thread-count variables the pool set in this worker's environment, as it set them: not the user's.
_pool_thread_limits: dict[str, str] = {}


def set_worker_share(cpus: int | None) -> None:
    """Make ``cpus`` this process's share of the CPUs, as a worker of a process pool; ``None``: none.

    The worker calls it with what its set-up message says, before the pool's
    initializer and its first task: from then on every default size of a pool,
    an ``Executor`` or ``num_threads="auto"`` started in this process is at most
    ``cpus``.

    Args:
        cpus: the share, an int >= 1, or ``None`` for this process's own count.

    Raises:
        TypeError: ``cpus`` is neither an int nor ``None``.
        ValueError: ``cpus`` is below 1.
    """
    global _share
    if cpus is not None and type(cpus) is not int:  # not a bool, a float or a str: a share is a count
        raise TypeError(f"a worker's CPU share must be an int >= 1 or None, got {cpus!r}")
    if cpus is not None and cpus < 1:
        raise ValueError(f"a worker's CPU share must be an int >= 1 or None, got {cpus!r}")
    _share = cpus


def worker_share() -> int | None:
    """This process's share of the CPUs, as a worker of a process pool, or ``None`` where it has none."""
    return _share


def set_pool_thread_limits(limits: dict[str, str]) -> None:
    """Note the thread counts (``OMP_NUM_THREADS``, the BLAS ones) the pool set in this worker's environment.

    The worker calls it with what its set-up message says, before the pool's
    initializer and its first task. A pool started in this process takes a
    variable of this list, still as the pool set it, for none of the user's:
    it sets its own count there, from this worker's share, as the outer pool
    did from the program's CPUs (``_process.thread_limits``). One the user
    set, in the program or in a task here, stays as set.

    Args:
        limits: each variable's name and the count the pool gave it, a str.
    """
    global _pool_thread_limits
    _pool_thread_limits = dict(limits)


def pool_thread_limits() -> dict[str, str]:
    """The thread-count variables the pool set in this worker's environment, with their counts; empty elsewhere."""
    return _pool_thread_limits
