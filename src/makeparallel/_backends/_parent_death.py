"""A worker dies with its parent, even inside a long C call.

The worker's pipe closing is noticed by a thread that needs the GIL, which a
long C call (``sum(range(10**11))``) holds: such a worker would run on,
re-parented to init. Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``)
is delivered by the kernel whatever the process does. It must be ``SIGKILL``:
a Python handler cannot run during a C call either.

Linux sends it when the *thread* that forked the process ends, not the
process, so each template is started by a thread of its own, which waits for
it to exit (``_template_start``), and, where there is no template, every
worker by the pool's loop thread, which outlives them; a worker forked from
the template asks for the signal on the template's death. The parent may have died between starting the worker and the
``prctl`` call: the worker then checks that its parent is still the process
that started it.
"""

from __future__ import annotations

import os
import sys

from ._libc import libc_call

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:
    import _signal as signal  # signal's functions without its enums (``_template``)

__all__ = ["die_with_parent", "still_die_with_parent"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# The real parent's id: a worker forked from the template has os.getppid name the program (_template).
_real_getppid = os.getppid


_parent_pid: int | None = None  # the parent die_with_parent was asked about


def die_with_parent(parent_pid: int) -> None:
    """Ask to be killed when the parent ends (Linux); exit now if it has ended already."""
    global _parent_pid
    _parent_pid = parent_pid
    if sys.platform.startswith("linux"):
        try:
            libc_call("prctl", _PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)()
        except (OSError, AttributeError):  # pragma: no cover - every Linux libc has prctl
            pass
    if _real_getppid() != parent_pid:  # re-parented already: the parent is gone
        os._exit(0)


def still_die_with_parent() -> None:
    """Ask again, after code that may have changed this process's user or group ids.

    Linux clears the request when they change (``prctl(2)``): an initializer
    that dropped privileges (``os.setuid``) left its worker, in a long C call,
    running on after the program was killed, re-parented to init.
    """
    if _parent_pid is not None:
        die_with_parent(_parent_pid)
