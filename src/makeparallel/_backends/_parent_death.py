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

Linux also clears the request when the process's effective or file-system
user or group id changes (``prctl(2)``): a task that dropped root's
privileges (``os.setuid``), then ran a long C call, ran on after the program
was killed, re-parented to init. So each of ``os``'s functions that change
those ids asks again as it returns (:func:`_asking_again`), and a worker asks
again after its initializer (:func:`still_die_with_parent`), which may have
changed them another way (``ctypes``).
"""

from __future__ import annotations

import _thread
import os
import sys

from ._libc import libc_call

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable
else:
    import _signal as signal  # signal's functions without its enums (``_template``)

__all__ = ["ask_again_if_changed", "die_with_parent", "still_die_with_parent"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# The real parent's id: a worker forked from the template has os.getppid name the program (_template).
_real_getppid = os.getppid
# os's functions that change an effective or file-system user or group id (os has no setfsuid).
_ID_SETTERS = ("setuid", "seteuid", "setreuid", "setresuid", "setgid", "setegid", "setregid", "setresgid")


_parent_pid: int | None = None  # the parent die_with_parent was asked about
_asked_in: int | None = None  # the process that asked: not a process it forked since
_asking_thread: int | None = None  # the thread that asked: the worker's main thread, which runs its tasks
_changed_elsewhere = False  # another thread changed the ids since: the main thread asks again (ask_again_if_changed)


def die_with_parent(parent_pid: int) -> None:
    """Ask, on this thread, to be killed when the parent ends (Linux), and again at each change of ids; exit now if it has ended already."""
    global _parent_pid, _asked_in, _asking_thread
    _parent_pid = parent_pid
    _asked_in = os.getpid()
    _asking_thread = _thread.get_ident()
    if sys.platform.startswith("linux"):
        for name in _ID_SETTERS:
            setter = getattr(os, name, None)
            if setter is not None and not hasattr(setter, "__wrapped__"):
                _install(name, _asking_again(setter))
    _ask(parent_pid)


def still_die_with_parent() -> None:
    """Ask again, on this thread, after code that may have changed this process's user or group ids.

    Linux clears the request when they change (``prctl(2)``): an initializer
    that dropped privileges (``os.setuid``) left its worker, in a long C call,
    running on after the program was killed, re-parented to init.
    """
    if _parent_pid is not None:
        _ask(_parent_pid)


def ask_again_if_changed() -> None:
    """Ask again on this thread, the one that asked first, if another thread changed the ids since (a task's own).

    The request is the calling thread's, and glibc changes the ids of every
    thread, which clears it on each: one re-armed only on a thread of the
    task's own, which then ended, left the worker without it.
    """
    global _changed_elsewhere
    if _changed_elsewhere:
        _changed_elsewhere = False
        still_die_with_parent()


def _ask(parent_pid: int) -> None:
    """Ask for ``SIGKILL`` when the parent ends, on this thread (Linux); exit now if it has ended already."""
    if sys.platform.startswith("linux"):
        try:
            libc_call("prctl", _PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)()
        except (OSError, AttributeError):  # pragma: no cover - every Linux libc has prctl
            pass
    if _real_getppid() != parent_pid:  # re-parented already: the parent is gone
        os._exit(0)


def _asking_again(setter: Callable[..., None]) -> Callable[..., None]:
    """``setter`` (``os.setuid``...), asking for the parent-death signal again as it returns, in the process that asked.

    Not in a process forked since (a task's own child), whose parent is not
    the one asked about: it would take itself for an orphan and exit. The
    calling thread asks; where it is not the one that asked first, that one
    asks again as the task ends (:func:`ask_again_if_changed`): a thread of
    the task's that changed them, then ended, left the worker without the
    request until then.
    """

    def set_ids(*ids: int) -> None:
        global _changed_elsewhere
        try:
            setter(*ids)
        finally:
            if os.getpid() == _asked_in:
                still_die_with_parent()
                if _thread.get_ident() != _asking_thread:
                    _changed_elsewhere = True

    # Pickled by name, as the built-in was: ``posix.setuid``, which is this function here.
    set_ids.__module__, set_ids.__name__, set_ids.__qualname__ = "posix", setter.__name__, setter.__name__
    set_ids.__doc__ = setter.__doc__
    set_ids.__wrapped__ = setter  # type: ignore[attr-defined]
    return set_ids


def _install(name: str, function: Callable[..., None]) -> None:
    """Put ``function`` in place of ``os``'s function ``name``, and ``posix``'s: the same one, where pickle finds it by name."""
    import posix  # os's functions: on Linux, where this runs, it exists

    setattr(os, name, function)
    setattr(posix, name, function)
