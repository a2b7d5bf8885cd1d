"""How much memory this process may use and how much is in use: the container's figures first.

``psutil.virtual_memory()`` reports the host. Inside a container limited to 2 GiB
on a 64 GiB host it says memory is plentiful until the kernel's OOM killer ends
the process. So the budget is read, in order, from:

1. this process's own cgroup and its ancestors (the level whose usage is the
   largest share of its limit wins: a parent's limit shared with siblings, a
   Kubernetes pod's, may be nearly full while this process's own level is not,
   and the kernel kills at whichever level runs out first):
   v2 ``memory.max`` (``max``: no limit at that level), usage ``memory.current``
   minus the ``inactive_file`` line of ``memory.stat`` (page cache the kernel
   reclaims before it kills anything, as ``docker stats`` and the kubelet count);
   v1 ``memory.limit_in_bytes`` (values near 2**63 mean none), usage
   ``memory.usage_in_bytes`` minus ``total_inactive_file``;
2. ``RLIMIT_AS``, against this process's virtual size;
3. the host, from psutil (total, and in use = total - available).
"""

from __future__ import annotations

import os
from typing import NamedTuple

from ._cgroup import CGROUP_ROOT, PROC_SELF_CGROUP, own_cgroup_dirs, read

__all__ = ["MemoryBudget", "cgroup_memory", "memory_budget"]

_UNLIMITED_V1 = 2**62  # v1 reports "no limit" as a page-rounded 2**63 - 1


class MemoryBudget(NamedTuple):
    """Memory in use against the limit that applies, in bytes, and where they came from."""

    used: int
    limit: int
    source: str
    """``"cgroup v2"``, ``"cgroup v1"``, ``"RLIMIT_AS"`` or ``"host"``."""

    @property
    def percent(self) -> float:
        """Memory in use, in percent of the limit."""
        return 100.0 * self.used / self.limit if self.limit > 0 else 0.0


def _stat(folder: str, name: str, key: str) -> int:
    try:
        for line in read(os.path.join(folder, name)).splitlines():
            field, _, value = line.partition(" ")
            if field == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _v2_at(folder: str) -> MemoryBudget | None:
    try:
        limit = read(os.path.join(folder, "memory.max")).strip()
        if limit == "max":
            return None
        current = int(read(os.path.join(folder, "memory.current")))
        return MemoryBudget(max(0, current - _stat(folder, "memory.stat", "inactive_file")), int(limit), "cgroup v2")
    except (OSError, ValueError):
        return None


def _v1_at(folder: str) -> MemoryBudget | None:
    try:
        limit = int(read(os.path.join(folder, "memory.limit_in_bytes")))
        if limit >= _UNLIMITED_V1:
            return None
        usage = int(read(os.path.join(folder, "memory.usage_in_bytes")))
        inactive = _stat(folder, "memory.stat", "total_inactive_file")
        return MemoryBudget(max(0, usage - inactive), limit, "cgroup v1")
    except (OSError, ValueError):
        return None


def cgroup_memory(root: str = CGROUP_ROOT, proc_self_cgroup: str = PROC_SELF_CGROUP) -> MemoryBudget | None:
    """The memory limit of this process's cgroup and its ancestors nearest to full, with its usage; ``None`` if none.

    Nearest by share used, not the smallest limit: a 4 GiB parent 97% full
    (by siblings) is the one to heed beside this cgroup's own 2 GiB, 25% full.
    """
    budgets = [
        budget
        for folder in own_cgroup_dirs(root, proc_self_cgroup, "memory")
        for budget in (_v2_at(folder) or _v1_at(folder),)
        if budget is not None
    ]
    return max(budgets, key=lambda b: b.percent) if budgets else None


def memory_budget(root: str = CGROUP_ROOT, proc_self_cgroup: str = PROC_SELF_CGROUP) -> MemoryBudget:
    """This process's memory budget: its cgroup's, else ``RLIMIT_AS``, else the host's."""
    budget = cgroup_memory(root, proc_self_cgroup)
    if budget is not None:
        return budget
    import psutil  # a runtime dependency, loaded on first use

    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and soft > 0:
            return MemoryBudget(psutil.Process().memory_info().vms, soft, "RLIMIT_AS")
    except (ImportError, OSError, ValueError):  # no resource module (Windows)
        pass
    host = psutil.virtual_memory()
    return MemoryBudget(host.total - host.available, host.total, "host")
