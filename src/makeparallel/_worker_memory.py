"""The resident memory (RSS) of another process, read often and cheaply, for ``max_worker_memory``.

On Linux, ``/proc/<pid>/statm`` (the file ``psutil.Process.memory_info()``
reads there) is opened once and read again with one ``pread``: about 4 us, where
psutil, which opens, reads and closes it each time, took 12-50 us on the shared
2-core test machine. The open file also stays bound to that process: once it
is gone, a read fails rather than report a new process that got its pid.
Without ``/proc`` (macOS), psutil reads it.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from ._backends._fd_numbers import standard_numbers_held

__all__ = ["ResidentMemory"]

_PROCFS = os.path.exists("/proc/self/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE") if _PROCFS else 0


class ResidentMemory:
    """The resident memory of the process ``pid``, in bytes, each time :meth:`read` is called."""

    __slots__ = ("__weakref__", "_fd", "_process")

    def __init__(self, pid: int) -> None:
        self._fd: int | None = None
        self._process: Any = None
        if _PROCFS:
            try:
                with standard_numbers_held():
                    self._fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:  # it is gone already
                return
            weakref.finalize(self, os.close, self._fd)
        else:
            import psutil  # a runtime dependency, loaded only where there is no /proc

            try:
                self._process = psutil.Process(pid)
            except psutil.Error:
                return

    def read(self) -> int | None:
        """Resident bytes now, or ``None`` if the process is gone."""
        if self._fd is not None:
            try:
                return int(os.pread(self._fd, 256, 0).split()[1]) * _PAGE
            except (OSError, IndexError, ValueError):
                return None
        if self._process is not None:
            import psutil

            try:
                return int(self._process.memory_info().rss)
            except psutil.Error:
                return None
        return None
