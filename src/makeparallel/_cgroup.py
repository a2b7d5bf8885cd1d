"""This process's own cgroup folders, for the container's CPU and memory limits.

``/proc/self/cgroup`` names the process's cgroup per hierarchy: one line
``0::/path`` for cgroup v2 (unified), and for v1 one line per hierarchy with its
controllers (``4:memory:/path``). A limit may be set at any level above too, so
readers walk from the innermost folder up to the mount point and keep the one
that binds first. Plain ``os.path``: importing the library imports no ``pathlib``.
"""

from __future__ import annotations

import os

__all__ = ["CGROUP_ROOT", "PROC_SELF_CGROUP", "own_cgroup_dirs", "read"]

CGROUP_ROOT = "/sys/fs/cgroup"
PROC_SELF_CGROUP = "/proc/self/cgroup"

# Where cgroup v1 mounts each controller's hierarchy, after its own name.
_V1_MOUNTS = {"cpu": ("cpu,cpuacct", "cpu"), "memory": ("memory",)}


def read(path: str) -> str:
    # os.fsdecode: a cgroup's name may be any bytes, and the string gives them back to open().
    with open(path, "rb") as file:
        return os.fsdecode(file.read())


def own_cgroup_dirs(root: str, proc_self_cgroup: str, controller: str) -> list[str]:
    """This process's cgroup folders from the innermost up to ``root``: v2 first, then v1 ``controller``."""
    try:
        lines = read(proc_self_cgroup).splitlines()
    except OSError:
        return []
    dirs: list[str] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # cgroup v2, unified
            base = root
        elif controller in controllers.split(","):  # cgroup v1: mounted under one of these names
            mounts = [os.path.join(root, name) for name in (controllers, *_V1_MOUNTS[controller])]
            base = next((mount for mount in mounts if os.path.isdir(mount)), mounts[-1])
        else:
            continue
        parts = [part for part in path.split("/") if part]
        dirs.extend(os.path.join(base, *parts[:depth]) for depth in range(len(parts), -1, -1))
    return dirs
