"""What a child process inherits from the process beyond its environment: umask, limits, ignored signals, identity.

A worker started as a fresh interpreter, or forked by ``multiprocessing``,
inherits these from the pool's process as they are at its start. A worker
forked from the template inherits the template's instead, which are the pool's
process's of the moment the template started: a program that tightened its
umask, lowered a resource limit, ignored a signal (``SIGHUP``, say) or set
its ``oom_score_adj`` after its first process task found every later worker
ignoring it. So the pool records what the template inherits
(:func:`snapshot`), sends each forked worker what differs from it now
(:func:`changes_since`), and the worker takes that on (:func:`take`) before its
first task. Where nothing changed, nothing is sent and the worker does nothing.

Some of what a process inherits no fork can take on: its user and group ids
(a worker forked from a template started as root stayed root after the
program dropped its privileges, where a fresh interpreter would not have),
its capabilities, ``no_new_privs`` and seccomp filters (a filter the program
installed for all its threads did not reach its later workers),
its session and process group (a program that left its terminal with
``os.setsid()`` had its later workers killed by the terminal's hang-up), its
root directory (``chroot``), its control group, and the limit on how many
processes it may start, which the template's ``fork()`` obeys, not the
worker's. Where one of these changed since the template started
(:func:`departed_since`), the pool forks no more workers from that template
(``ProcessBackend._fork``). Nor can a fork take on what a process reads
from its environment only as it starts (:func:`_read_at_start`): a
program that set ``LC_ALL``, ``PYTHONHASHSEED`` or ``LD_LIBRARY_PATH`` in
``os.environ`` after its first process task had its later workers run with
the template's locale, hash seed and libraries, where fresh interpreters
take the new ones; where one of those changed, likewise.

Capabilities, ``no_new_privs`` and seccomp filters belong to a thread: they
are read in the thread that starts the workers (the pool's loop thread, which
starts any fresh interpreter), from ``/proc/thread-self``. A new program has
those of the thread that starts it: a change the main thread made for itself
alone reaches no program another thread starts.

Settings of a thread rather than of the process (CPU affinity, niceness and
scheduling policy on Linux) are not followed: a new process takes them from the
thread that starts it, and every worker is forked from the template, which took
them from the thread whose task started it (as ``multiprocessing.Pool``'s first
workers take those of the thread that made the pool). Following the main
thread's at each fork instead spreads a mistake: OpenMP with ``OMP_PROC_BIND``
pins the main thread to one CPU, and every later worker would run there.
"""

from __future__ import annotations

import os

# typing.TYPE_CHECKING without importing typing: the template imports this before its first fork.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Iterable
    from typing import Any

    #: A process's umask (None where /proc does not say), ignored signals (a mask),
    #: oom_score_adj and resource limits as text, :func:`_identity` and :func:`_read_at_start`.
    Snapshot = tuple[int | None, int | None, bytes, bytes, tuple[Any, ...], tuple[tuple[str, str], ...]]
else:
    import _signal as signal  # signal's functions without its enums (``_template``)

__all__ = [
    "at_their_default",
    "changes_since",
    "departed_since",
    "inherits_standard_stream",
    "interrupts_ignored",
    "snapshot",
    "take",
]

_LIMITS = "/proc/self/limits"  # the resource limits as text, compared without importing resource
# This thread's status: the process's, but for what each thread has of its own (capabilities...).
_STATUS = "/proc/thread-self/status" if os.path.exists("/proc/thread-self/status") else "/proc/self/status"
# The lines of the status with what no fork can take on: the user and group ids, the
# capabilities (CapInh, CapPrm, CapEff, CapBnd, CapAmb), no_new_privs, seccomp.
_IDENTITY = (b"Uid:", b"Gid:", b"Groups:", b"Cap", b"NoNewPrivs:", b"Seccomp")
_OOM_SCORE_ADJ = "/proc/self/oom_score_adj"
_PROCESS_LIMIT = b"Max processes"  # the line of /proc/self/limits with RLIMIT_NPROC
# The line with RLIMIT_STACK, from which glibc sets the default stack size of threads as a process starts.
_STACK_LIMIT = b"Max stack size"
# The environment variables a process reads only as it starts: the interpreter's own (PYTHONHASHSEED,
# PYTHONUTF8, PYTHONIOENCODING...), the locale (the interpreter sets LC_CTYPE from LC_ALL, LC_CTYPE
# or LANG, and with it the encoding of files and standard streams), the dynamic loader's (LD_LIBRARY_PATH,
# LD_PRELOAD...) and glibc malloc's tunables.
_READ_AT_START_PREFIXES = ("PYTHON", "LC_", "LD_", "MALLOC_")
_READ_AT_START_NAMES = frozenset({"LANG", "GLIBC_TUNABLES"})
# Signals a worker sets itself, whatever the program's: Python ignores SIGPIPE and SIGXFSZ
# as any interpreter starts, the worker ignores SIGINT and handles SIGTERM; no process
# can ignore SIGKILL or SIGSTOP.
_SIGNALS_OF_ITS_OWN = frozenset(
    {signal.SIGINT, signal.SIGKILL, signal.SIGPIPE, signal.SIGTERM, signal.SIGSTOP, signal.SIGXFSZ}
)


def snapshot(environ: dict[str, str]) -> Snapshot:
    """What a process started now, with ``environ``, inherits (``Snapshot`` lists it)."""
    status = _read(_STATUS)
    inherited = _umask(status), _ignored(status), _read(_OOM_SCORE_ADJ), _read(_LIMITS), _identity(status)
    return (*inherited, _read_at_start(environ))


def departed_since(inherited: Snapshot, environ: dict[str, str]) -> bool:
    """Whether this process changed, since ``inherited``, what no fork of a process started then can take on.

    Its user or group ids, capabilities, ``no_new_privs`` or seccomp filters,
    session or process group, root directory or control group, its limit on
    processes or on its stack, or an environment variable read only as a
    process starts (:func:`_read_at_start`), in ``environ``: the environment
    the worker is to be given, read once for both. Three reads of ``/proc``,
    a ``stat`` and a look at the environment, about 80 microseconds: once per
    worker forked, never per task.
    """
    *_, limits, identity, read_at_start = inherited
    if _read_at_start(environ) != read_at_start or _identity(_read(_STATUS)) != identity:
        return True
    now = _read(_LIMITS)
    return any(_line(now, line) != _line(limits, line) for line in (_PROCESS_LIMIT, _STACK_LIMIT))


def interrupts_ignored() -> bool:
    """Whether this program ignores SIGINT (Ctrl-C): its workers then ignore it too, not only do nothing on it.

    A worker does nothing on SIGINT, the parent decides what to cancel
    (``_process_worker._interrupted``). Where the program ignores it (started
    in the background, ``trap '' INT``), so do the programs it runs, and the
    worker ignores it too, so that those its tasks run do as well.
    """
    return signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def inherits_standard_stream(fd: int) -> bool:
    """Whether a program started now inherits this process's descriptor ``fd`` (1, standard output; 2, error).

    Not where this process closed it, nor where it marked it close-on-exec: the
    number may then be one of the pool's own (a worker's pipe, its journal),
    which a task's output would overwrite. A worker gets ``os.devnull`` there.
    """
    try:
        return os.get_inheritable(fd)
    except OSError:  # closed
        return False


def changes_since(inherited: Snapshot) -> dict[str, Any] | None:
    """What differs in this process from ``inherited`` (a :func:`snapshot`); ``None`` if nothing.

    Costs three reads of ``/proc``, about 45 microseconds: once per worker
    started, never per task.
    """
    umask, ignored, oom_score_adj, limits, *_ = inherited
    changes: dict[str, Any] = {}
    status = _read(_STATUS)
    now = _umask(status)
    if now != umask and now is not None:
        changes["umask"] = now
    now = _ignored(status)
    if now != ignored and now is not None:
        changes["ignored"] = now
    score = _read(_OOM_SCORE_ADJ)
    if score != oom_score_adj and score:
        changes["oom_score_adj"] = score
    if _read(_LIMITS) != limits:  # rare: only then is ``resource`` imported
        import resource

        changes["limits"] = {number: resource.getrlimit(number) for number in _limit_numbers(resource)}
    return changes or None


def take(changes: dict[str, Any]) -> None:
    """In a new worker: take on ``changes`` (from :func:`changes_since`).

    A limit the system refuses is skipped: a fresh interpreter would have
    inherited it, a fork must ask for it, and failing the worker would lose
    more than the limit.
    """
    if "umask" in changes:
        os.umask(changes["umask"])
    if "ignored" in changes:
        _ignore(changes["ignored"])
    if "oom_score_adj" in changes:
        try:
            with open(_OOM_SCORE_ADJ, "wb") as file:
                file.write(changes["oom_score_adj"])
        except OSError:  # lower than this process may set (CAP_SYS_RESOURCE): as a refused limit
            pass
    if "limits" in changes:
        import resource

        for number, limit in changes["limits"].items():
            if resource.getrlimit(number) != limit:
                try:
                    resource.setrlimit(number, limit)
                except (OSError, ValueError):
                    pass


def _ignore(wanted: int) -> None:
    """Ignore the signals of the mask ``wanted``, and no other, but those a worker sets itself.

    As a new program would: it starts with the signals its parent ignored
    ignored, and every other at its default (the handlers are gone with the
    parent's code).
    """
    current = _ignored(_read(_STATUS)) or 0
    for number in range(1, (current | wanted).bit_length() + 1):
        bit = 1 << (number - 1)
        if (current ^ wanted) & bit and number not in _SIGNALS_OF_ITS_OWN:
            try:
                signal.signal(number, signal.SIG_IGN if wanted & bit else signal.SIG_DFL)
            except (OSError, ValueError):  # one the C library keeps for itself
                pass


def _umask(status: bytes) -> int | None:
    """The umask in ``status`` (:data:`_STATUS`): ``os.umask`` would set one, which a file made meanwhile would get.

    ``None`` where the status does not say (Linux before 4.7).
    """
    line = _line(status, b"Umask:")
    return None if line is None else int(line.split()[1], 8)


def _ignored(status: bytes) -> int | None:
    """The signals ``status`` (:data:`_STATUS`) says the process ignores, as a mask: bit ``n - 1`` for signal ``n``."""
    return _signal_mask(status, b"SigIgn:")


def _signal_mask(status: bytes, line_start: bytes) -> int | None:
    """The mask of signals on the line of ``status`` that begins with ``line_start``; None where it has none."""
    line = _line(status, line_start)
    return None if line is None else int(line.split()[1], 16)


def at_their_default(signals: Iterable[int]) -> list[int]:
    """Those of ``signals`` that this process neither catches nor ignores, as its status says.

    Not ``signal.getsignal``, which knows only what Python set: a handler a
    start-up hook set in C (``faulthandler.register``) reads as the default there.
    """
    status = _read(_STATUS)
    taken = (_ignored(status) or 0) | (_signal_mask(status, b"SigCgt:") or 0)
    return [number for number in signals if not taken >> (number - 1) & 1]


def _line(text: bytes, start: bytes) -> bytes | None:
    """The first line of ``text`` (a file of ``/proc``) that begins with ``start``."""
    for line in text.splitlines():
        if line.startswith(start):
            return line
    return None


def _identity(status: bytes) -> tuple[Any, ...]:
    """The ids, capabilities, no_new_privs and seccomp in ``status`` (:data:`_STATUS`), session, group, root, cgroup."""
    try:
        root = os.stat("/")
        where = (root.st_dev, root.st_ino)  # /proc/self/root would name it "/" once inside
    except OSError:
        where = None
    ids = tuple(line for line in status.splitlines() if line.startswith(_IDENTITY))
    return ids, os.getsid(0), os.getpgrp(), where, _read("/proc/self/cgroup")


def _read_at_start(environ: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The variables of ``environ`` that a process reads only as it starts, sorted by name."""
    return tuple(
        sorted(
            (name, value)
            for name, value in environ.items()
            if name.startswith(_READ_AT_START_PREFIXES) or name in _READ_AT_START_NAMES
        )
    )


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return b""


def _limit_numbers(resource: Any) -> list[int]:
    """The resource limits this Python knows (``RLIMIT_*``)."""
    return sorted({getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")})
