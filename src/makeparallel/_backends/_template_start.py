"""Starting the template process (``_template``): from a thread of its own, and as early as possible.

Linux sends a process's parent-death signal when the *thread* that started it
ends, not the process. So each template is started by a thread of its own,
which then waits for it to exit and reaps it: that thread outlives the
template, whichever thread asked for one (a web request's, say, long gone
before the pool).

A first process task starts one (:func:`start_early`) before the parent
imports the rest of the process backend, and this module imports nothing that
the package has not (``_socket``, not ``socket``): the template's start-up, a
fresh interpreter and the worker's imports, is the longest part of a cold
pool's first result, and it overlaps those imports instead of following them.
"""

from __future__ import annotations

import _socket
import os
import sys
import threading

from .. import _at_fork_in_child
from ._inherited import inherits_standard_stream, snapshot
from ._interpreter_options import PACKAGE_FOLDER, interpreter_options, path_arguments, refused_start
from ._socketpair import blocking_socketpair

# typing.TYPE_CHECKING without importing typing: a first process task imports this first.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:
    import _signal as signal  # signal's functions without its enums (see _template)

__all__ = [
    "StartedTemplate",
    "ending_signals",
    "environment",
    "queued_signals",
    "start_early",
    "stop_early",
    "stop_forking",
    "take_started",
    "template_available",
]

# The pool passes only the template's socket: every other descriptor the template
# inherited is closed first, as subprocess's close_fds would (one listing, where
# closing every possible number could take a million system calls). The garbage
# collector is off from the first line: see ``_template.serve``. It dies with the
# program before its imports: a program killed as they ran left it running until
# they were done, re-parented to init.
_TEMPLATE_MAIN = """\
import gc, os, sys
gc.disable()
sys.path[:0] = sys.argv[4:]
from makeparallel._backends._parent_death import die_with_parent
die_with_parent(int(sys.argv[2]))
fd = int(sys.argv[1])
for name in os.listdir("/proc/self/fd"):
    if int(name) > 2 and int(name) != fd:
        try:
            os.close(int(name))
        except OSError:
            pass
from makeparallel._backends._template import serve
import makeparallel._backends._process_worker
serve(fd, int(sys.argv[2]), {int(n) for n in sys.argv[3].split(",") if n})
"""


_POINTER = 8  # bytes of each argument's and each variable's pointer that a new program is given


_forking = True  # until a template declined a fork (stop_forking)


def template_available() -> bool:
    """Whether workers are forked from a template here: Linux, where the parent-death chain holds.

    Not once a template declined a fork (:func:`stop_forking`).
    """
    return (
        _forking
        and sys.platform.startswith("linux")
        and hasattr(os, "fork")
        and hasattr(os, "posix_spawn")
        and hasattr(os, "O_PATH")  # the worker's directory travels as a descriptor of it
        and hasattr(_socket.socket, "sendmsg")  # the worker's pipe travels as SCM_RIGHTS
    )


class StartedTemplate:
    """A template process, started by a thread of its own that reaps it: its socket, pid and exit code.

    Raises ``OSError`` if it cannot start.
    """

    def __init__(self) -> None:
        # Read once, for the template's start and for what the pool compares it with since: another
        # thread that changed a variable in between had its workers told one value and run with another.
        variables = environment()
        self.inherited = snapshot(variables)  # what the template inherits from this process as it starts (_inherited)
        ours, theirs = blocking_socketpair(_socket.SOCK_SEQPACKET)
        self.sock = ours  # the pool's end: one packet per request or report
        self.pid: int | None = None
        self.returncode: int | None = None  # set once it exited and was reaped
        self._spawned = threading.Event()
        self._reaping = threading.Lock()  # kill() signals it only while it is not reaped (its pid is its own)
        self._error: OSError | None = None
        self._owner = threading.Thread(
            target=self._own, args=(theirs, variables), name="makeparallel-template", daemon=True
        )
        try:
            self._owner.start()
        except RuntimeError as error:  # no thread left (RLIMIT_NPROC): a start the system refused
            ours.close()
            theirs.close()
            raise OSError(f"cannot start the thread that starts the template: {error}") from error
        except BaseException:
            ours.close()  # Ctrl-C as start() waited for the thread: see below
            raise
        try:
            self._spawned.wait()
        except BaseException:
            # Ctrl-C as the caller (a first process task) waited: no pool will have this
            # template, so none would close its socket, and it served on, a child of the
            # program past mp.shutdown(). Closed, the template exits as it reads the end
            # (once spawned, if it was not yet), and its thread reaps it.
            ours.close()
            raise
        if self._error is not None:
            ours.close()
            raise self._error

    def _own(self, theirs: _socket.socket, variables: dict[str, str]) -> None:
        """Start the template (a fresh interpreter with this process's ``sys.path`` and ``variables``), then wait for it to exit.

        Where this process closed its standard output or error, the template
        gets ``os.devnull`` there: its own output (``-X importtime``'s, say)
        goes nowhere, not into a descriptor of the pool's (the socket's end is
        numbered 3 or more, ``_fd_numbers``).
        """
        try:
            fd = theirs.fileno()
            os.set_inheritable(fd, True)  # passed to the template, which closes every other descriptor
            # The template imports from this package's folder and this process's sys.path
            # first, which its command line carries (_interpreter_options), not PYTHONPATH:
            # the workers' environment must be the program's.
            # The template starts with SIGINT, ending_signals() and queued_signals() blocked
            # (_template.serve): a Ctrl-C as it imported printed its traceback. Its workers get
            # the program's own mask, which this thread has (it inherited it).
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
            masked = ",".join(str(int(signum)) for signum in sorted(mask))
            command = [sys.executable, *interpreter_options(), "-c", _TEMPLATE_MAIN, str(fd), str(os.getpid()), masked]
            arguments = [*command, PACKAGE_FOLDER, *path_arguments(sys.path)]
            environ = _environment_for_a_new_program(arguments, variables)
            environ["_MAKEPARALLEL_TEMPLATE"] = "1"  # see makeparallel/__init__
            streams = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
            streams += [
                (os.POSIX_SPAWN_OPEN, n, os.devnull, os.O_WRONLY, 0) for n in (1, 2) if not inherits_standard_stream(n)
            ]
            self.pid = os.posix_spawn(
                sys.executable,
                arguments,
                environ,
                file_actions=streams,
                setsigmask={*mask, signal.SIGINT, *ending_signals(), *queued_signals()},
            )
        except OSError as error:
            self._error = refused_start(error) if error.filename == sys.executable else error
            return
        except (ValueError, TypeError) as error:
            self._error = refused_start(error)
            return
        finally:
            theirs.close()
            self._spawned.set()
        try:
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)  # ended, not reaped: kill() may still signal it
            with self._reaping:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped by another (SIGCHLD ignored): its exit code is lost
            self.returncode = 0

    def exit_code(self, timeout: float) -> int | None:
        """Its exit code (``-N``: killed by signal N) once it exited and was reaped within ``timeout`` seconds, else None."""
        self._owner.join(timeout)
        return self.returncode

    def kill(self) -> None:
        """Send the template ``SIGKILL``, unless it was reaped; raises ``PermissionError`` if this process may not.

        A program that dropped its privileges since (``os.setuid``) may not
        signal a template started as root: that one ends with its socket closed.
        """
        with self._reaping:  # the owner thread reaped it after the check, and the kill found no such process
            if self.returncode is None and self.pid is not None:
                try:
                    os.kill(self.pid, signal.SIGKILL)  # not reaped yet: the pid is still the template's
                except ProcessLookupError:  # reaped by another (SIGCHLD ignored)
                    pass

    def stop(self) -> None:
        """End it: close the pool's end of its socket; after a second, kill it and wait for that (if this process may)."""
        self.sock.close()
        self._owner.join(1.0)
        try:
            self.kill()  # unless it was reaped meanwhile
        except PermissionError:
            return
        self._owner.join()


def stop_forking(threads: int) -> None:
    """Start every later worker of this process as a fresh interpreter: a template declined a fork, and says why.

    It runs ``threads`` threads, the others started by a start-up hook of this
    interpreter (``_template.serve``): every template would, so none is
    started again.
    """
    global _forking
    if not _forking:
        return
    _forking = False
    import logging  # only here: a first process task imports this module, and not logging

    logging.getLogger("makeparallel").warning(
        "the template process that forks the process pool's workers runs %d threads, the others started "
        "by a start-up hook (a sitecustomize or usercustomize module, or a .pth file), and a worker forked "
        "from it could deadlock: workers start as fresh interpreters from now on, each paying the "
        "interpreter's start-up",
        threads,
    )


def ending_signals() -> list[int]:
    """The signals a program, a terminal or ``kill`` may send whose default action ends a process (``signal(7)``).

    The template keeps them blocked (``_template.serve``). Not ``SIGINT``,
    which it ignores, nor the real-time signals (:func:`queued_signals`).
    Those whose default dumps core are blocked too (``kill -ABRT -PGID``
    killed the template, and every worker with it): a fault of the template's
    own still ends it, since the kernel unblocks a signal it raises for one,
    and ``abort()`` unblocks ``SIGABRT``.
    """
    names = ["SIGHUP", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF"]
    names += ["SIGABRT", "SIGBUS", "SIGFPE", "SIGILL", "SIGSEGV", "SIGSYS", "SIGTRAP", "SIGXCPU", "SIGXFSZ"]
    names += ["SIGIO", "SIGPWR", "SIGSTKFLT"]  # Linux's, where the template runs
    return [getattr(signal, name) for name in names if hasattr(signal, name)]


def queued_signals() -> range:
    """The real-time signals, ``SIGRTMIN`` to ``SIGRTMAX``, which end a process by default too.

    They queue: blocked, each one sent would hold a place in the user's quota
    of pending signals (``RLIMIT_SIGPENDING``) for as long as the template
    lives. So the template starts with them blocked, then ignores those it
    has at their default action, which drops what came meanwhile, and
    unblocks them (``_template.serve``); its workers take the default back.
    """
    if not hasattr(signal, "SIGRTMIN"):  # pragma: no cover - every Linux has them
        return range(0)
    return range(signal.SIGRTMIN, signal.SIGRTMAX + 1)


def _environment_for_a_new_program(arguments: list[str], variables: dict[str, str]) -> dict[str, str]:
    """``variables`` (this process's environment), less what no new program started with ``arguments`` can be given.

    Linux refuses to start a program (``E2BIG``) when one of its strings, an
    argument or a variable's ``name=value``, is longer than 32 pages
    (``MAX_ARG_STRLEN``: 128 KiB with 4 KiB pages), or when all of them, with
    a pointer to each, take more than ``ARG_MAX`` (a quarter of the stack
    limit: 2 MiB for 8 MiB). The template starts without such a variable,
    and without the largest others while the whole would not fit; its workers
    get the whole environment from the pool (``Template.start_message``).
    """
    page = os.sysconf("SC_PAGE_SIZE")
    room = os.sysconf("SC_ARG_MAX") - page  # a page for the program's path and the variable the template gets
    room -= sum(len(os.fsencode(argument)) + 1 + _POINTER for argument in arguments)
    sizes = {name: len(os.fsencode(name)) + len(os.fsencode(value)) + 2 for name, value in variables.items()}  # "=", NUL
    kept = {name for name, size in sizes.items() if size <= 32 * page}
    total = sum(sizes[name] + _POINTER for name in kept)
    for name in sorted(kept, key=sizes.__getitem__, reverse=True):
        if total <= room:
            break
        kept.remove(name)
        total -= sizes[name] + _POINTER
    return {name: value for name, value in variables.items() if name in kept}


def environment() -> dict[str, str]:
    """A copy of ``os.environ``, though another thread changes it meanwhile.

    ``dict(os.environ)`` lists the names, then reads each: a name another
    thread removed in between raised ``KeyError``. Then it reads it again.
    """
    while True:
        try:
            return dict(os.environ)
        except KeyError:
            continue


_early: StartedTemplate | None = None  # started by a first process task, for the pool it makes
_early_lock = threading.Lock()


def start_early() -> None:
    """Start a template now, for the pool being made for a first process task (:func:`take_started`)."""
    global _early
    if not template_available():
        return
    with _early_lock:
        if _early is None:
            try:
                _early = StartedTemplate()
            except OSError:
                pass  # the pool tries again, and falls back to fresh interpreters


def take_started() -> StartedTemplate:
    """The template :func:`start_early` started, else a new one; raises ``OSError`` if none can start."""
    global _early
    with _early_lock:
        started, _early = _early, None
    return started if started is not None else StartedTemplate()


def stop_early() -> None:
    """Stop the template :func:`start_early` started, if no pool took it: its pool stopped before its first worker.

    Left, a template stuck as it started (a ``sitecustomize`` that hangs)
    outlived the program: it asks for its parent-death signal only once it serves.
    """
    global _early
    with _early_lock:
        started, _early = _early, None
    if started is not None:
        started.stop()


def _drop_early_after_fork() -> None:
    """In a forked child, the early template is not its own: only the socket is its to drop.

    The lock is new: another thread of the parent may have held it, starting a template.
    """
    global _early, _early_lock
    _early_lock = threading.Lock()
    if _early is not None:
        _early.sock.close()
        _early = None


_at_fork_in_child(_drop_early_after_fork)
