"""Calls that makeparallel 0.2 needed and this library does not: accepted, doing nothing.

0.2 ran ``@parallel_priority`` tasks on a separate worker that had to be started
and stopped by hand. Here every pool orders its queue by priority, so there is
nothing to start; the calls stay so that 0.2 code runs unchanged. The migration
guide (``docs/migrating-from-0.2.md``) lists them.
"""

from __future__ import annotations

__all__ = ["start_priority_worker", "stop_priority_worker"]


def start_priority_worker() -> None:
    """Does nothing: priorities need no worker of their own (makeparallel 0.2 needed one).

    Every pool starts queued tasks by ``priority=``, highest first, from the
    first call on; remove the call when convenient.
    """


def stop_priority_worker() -> None:
    """Does nothing: see :func:`start_priority_worker`. Use ``shutdown()`` to stop work."""
