"""A process pool leaves the program descriptors of its own: it starts no worker that would take them.

Each worker holds two descriptors in the program (its pipe and its crash
journal), and its start briefly needs a few more. Under a tight limit
(``ulimit -n 64``, a container's) a pool of 32 started workers until the
system refused one, and left the program three: its own ``open()`` failed,
and so did the imports the package makes on first use (cloudpickle as the
first task is pickled, psutil in ``health()``), at random, as the pool's loop
thread started workers beside them. The standard library's pools raise at
once when they cannot start every worker; this pool serves on with the
workers it could start, and says why it has no more (``refused_starts``,
``health()``).
"""

from __future__ import annotations

import errno
import os

__all__ = ["DescriptorsReserved", "check_descriptors_left"]


class DescriptorsReserved(OSError):
    """A worker was not started: it would take descriptors the pool leaves to the program (``EMFILE``).

    Not the system's refusal, and so no failed start: the pool serves on with
    the workers it has, and starts one once a worker leaving gives its back.
    """


#: Descriptors a worker keeps in the program (its pipe, its journal).
KEPT_PER_WORKER = 2


def reserve(limit: int) -> int:
    """Descriptors a pool leaves free for the program under a limit of ``limit``: a quarter, at least 8."""
    return max(8, limit // 4)


def check_descriptors_left() -> None:
    """Raise :class:`DescriptorsReserved` if a worker started now would leave the program under :func:`reserve` free.

    Counts the open descriptors in ``/proc/self/fd`` (about 15 us); where
    there is none (not Linux), or no limit, nothing is checked. A pool with
    no worker starts one without asking (the caller): it cannot serve at all
    without one.

    Raises:
        DescriptorsReserved: ``EMFILE``, naming the limit, what is free and what is kept.
    """
    import resource  # a C module: quick to import, and only a worker's start needs it

    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY:
        return
    try:
        used = len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor aside
    except FileNotFoundError:  # no /proc: not Linux
        return
    except OSError:  # no descriptor left for the listing, which a start needs too
        used = limit
    free, kept = limit - used, reserve(limit)
    if free - KEPT_PER_WORKER < kept:
        raise DescriptorsReserved(
            errno.EMFILE,
            f"{free} file descriptors are free of the limit of {limit} (RLIMIT_NOFILE), and a process pool "
            f"leaves {kept} to the program: raise the limit (ulimit -n) or use fewer workers",
        )
