"""How many CPUs this process may really use: its affinity, capped by its cgroup's CPU quota.

``os.cpu_count()`` reports the host. Inside a container limited to two CPUs on a
64-core host it says 64, and a pool sized from it runs 32 threads per CPU. Every
default worker count of the library comes from :func:`usable_cpus` instead.

In a worker process of the ``"process"`` backend it is the worker's share of
the CPUs, ``max(1, the parent's usable CPUs // the pool's workers)`` (which
``_cpu_share`` keeps, set as the worker starts): a task that submits process
tasks, maps, or uses the thread pool gets pools that fit its share. Without it,
N workers each started a pool of N workers (N² processes) and N threads. The
rule is loky's and joblib's ``max_inner_num_threads`` (cpu_count // n_jobs,
joblib PR 940), the share each worker's BLAS and OpenMP libraries get already.
It is no variable of the worker's environment: a program a task starts is no
worker of the pool, and sees the whole machine.
"""

# No ``from __future__ import annotations``: typing.NamedTuple compiles each string
# annotation into a ForwardRef, about a millisecond of every program's first task.
import math
import os
from typing import NamedTuple

from ._cgroup import CGROUP_ROOT, PROC_SELF_CGROUP, own_cgroup_dirs
from ._cgroup import read as _read
from ._cpu_share import worker_share

__all__ = ["UsableCpus", "cgroup_cpu_quota", "usable_cpu_count", "usable_cpus"]

_CGROUP_ROOT = CGROUP_ROOT
_PROC_SELF_CGROUP = PROC_SELF_CGROUP


class UsableCpus(NamedTuple):
    """The usable CPU count and how it was found."""

    cpus: int
    """At least 1."""
    source: str
    """``"affinity"``, ``"cgroup quota"``, ``"cpu_count"`` (no affinity on this platform), or
    ``"worker share"`` in a worker process of the ``"process"`` backend (``_cpu_share``)."""


def _own_cgroup_dirs(root: str, proc_self_cgroup: str) -> list[str]:
    """This process's cgroup folders from the innermost up to ``root``, v2 first, then v1 ``cpu``."""
    return own_cgroup_dirs(root, proc_self_cgroup, "cpu")


def _quota_at(folder: str) -> float | None:
    """The CPU quota set at one cgroup level in CPUs, or ``None`` where none is set."""
    try:  # v2: "max 100000" or "200000 100000"
        quota, _, period = _read(os.path.join(folder, "cpu.max")).strip().partition(" ")
        if quota != "max" and float(period) > 0:
            return float(quota) / float(period)
        return None
    except (OSError, ValueError):
        pass
    try:  # v1: -1 means no quota
        quota_us = float(_read(os.path.join(folder, "cpu.cfs_quota_us")))
        period_us = float(_read(os.path.join(folder, "cpu.cfs_period_us")))
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def cgroup_cpu_quota(root: str = _CGROUP_ROOT, proc_self_cgroup: str = _PROC_SELF_CGROUP) -> float | None:
    """The tightest CPU quota of this process's cgroup and its ancestors, in CPUs (may be fractional).

    Reads cgroup v2 ``cpu.max`` and v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``
    (the kernel's CFS bandwidth control), walking from this process's own cgroup,
    named in ``/proc/self/cgroup``, up to the root. ``None`` where no level sets a quota
    or the files cannot be read (not Linux, no cgroup mounted).
    """
    quotas = [q for q in map(_quota_at, _own_cgroup_dirs(root, proc_self_cgroup)) if q is not None]
    return min(quotas) if quotas else None


def usable_cpus(root: str = _CGROUP_ROOT, proc_self_cgroup: str = _PROC_SELF_CGROUP) -> UsableCpus:
    """``min(affinity, ceil(cgroup quota))``, at least 1, with where the figure came from.

    The quota is rounded up, as the JVM and Go's runtime do: a quota of 1.5 CPUs
    keeps two threads busy part of the time, which beats one thread idle half of it.

    In a worker process of the ``"process"`` backend, the worker's share of the
    parent's CPUs (``_cpu_share``), source ``"worker share"``, where it
    is the smaller figure (a task that narrowed its affinity may use fewer).
    """
    if hasattr(os, "sched_getaffinity"):
        count, source = len(os.sched_getaffinity(0)), "affinity"
    else:  # pragma: no cover - platforms without affinity (macOS, Windows)
        count, source = os.cpu_count() or 1, "cpu_count"
    quota = cgroup_cpu_quota(root, proc_self_cgroup)
    if quota is not None and math.ceil(quota) < count:
        count, source = math.ceil(quota), "cgroup quota"
    share = worker_share()
    if share is not None and share <= count:
        return UsableCpus(share, "worker share")
    return UsableCpus(max(1, count), source)


def usable_cpu_count() -> int:
    """The number of CPUs this process may use (see :func:`usable_cpus`)."""
    return usable_cpus().cpus
