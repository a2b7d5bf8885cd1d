"""The template process: a clean interpreter that forks the pool's workers (Linux).

A worker started as a fresh interpreter pays the interpreter's start-up and the
worker module's imports, every time: the first result of a cold pool of two
took 5x ``multiprocessing.Pool``'s with ``fork``, and each replacement after a
crash or a timeout paid it again. Forking the user's process instead would be
instant, but that process may be threaded, and a fork of a threaded process can
deadlock on a lock some other thread held. So the pool starts one *template*
(what ``multiprocessing``'s forkserver does): a fresh interpreter,
single-threaded, which imports only the worker module and forks a worker each
time the pool asks. A fork of it is a ready worker in about a millisecond.

What a fresh interpreter gave each worker, a forked one still gets:

* the parent's *current* environment (with the BLAS thread limits) is the
  first message on the worker's own pipe, which has no size limit (a request
  is one packet, which the socket's buffer bounds: an environment of 250 KB
  in it failed every worker's start), and the worker sets it before it does
  anything else, so a task that imports NumPy sees the limits; so do its
  umask and resource limits where they changed since the template started
  (``_inherited``; where what no fork can take on changed, its user or group
  ids say, the pool forks no more from this template: ``ProcessBackend._fork``),
  and a changed ``TZ`` is read again; its ``sys.path`` is
  the next message there; its working directory comes with the request, as
  a descriptor of the directory itself, so that one removed since is still
  the worker's, as a fresh interpreter's would be (its path failed every
  start, since ``os.getcwd()`` raises there; one the program may not search,
  which no fork can enter, has the worker start as a fresh interpreter
  instead: ``_process._enterable``); so do its standard output and
  error, which the worker puts in place of the template's, so that what C
  code or a child process writes there goes where the program's go now (a
  program that redirected its own to a log file after its first task had
  its later workers' go to the old ones);
* the template dies with the user's process (``PR_SET_PDEATHSIG``), and each
  worker with the template, so the chain ends when the user's process dies,
  even inside a long C call (each template is started by a thread of its
  own, which outlives it: ``_template_start``); a worker also ends when its
  own pipe to the user's process closes;
* a worker that returns from its main function exits as a fresh interpreter
  would (``SystemExit`` unwinds to the top: ``atexit`` handlers run);
* its ``os.getppid()`` is the program's process id, and a signal to the
  program's process group ends the workers it would end, not the template
  (``serve``), so their tasks are reported ended by that signal;
* the pool never signals a process id the template may have reaped and the
  system reused: it asks the template, which signals only its own unreaped
  children, and reports each one's exit code when it reaps it.

The socket to the template is a ``SOCK_SEQPACKET`` pair: each request is one
packet, and a fork request carries the worker's end of its pipe, its crash
journal (``_crash_journal``) and its working directory as ancillary data
(``SCM_RIGHTS``)::

    pool -> template   ("fork", number) + the worker's socket, journal, directory,
                       standard output and standard error
                       ("signal", number, signum)
                       ("preload",): import now what some tasks need (``_preload``)
    template -> pool   ("forked", number, pid)
                       ("exited", number, returncode)
                       ("refused", number, (errno, strerror)): fork() failed (no process left...)
                       ("declined", number, threads): it runs other threads, and forks no more

Workers are numbered by the pool, so a request never waits for a reply. The
pool's first message to a forked worker, on the worker's own pipe::

    pool -> worker     ("start", environ, changes)

The first process task starts the template before the parent imports the
rest of the process backend (``_template_start``): the template's start-up,
the longest part of a cold pool's first result, overlaps those imports. For
the same reason this module, and every module a worker loads before its first
task, imports the C modules under ``pickle``, ``socket`` and ``signal``
(``_pickle``, ``_socket``, ``_signal``): the Python modules over them import
``re`` and ``enum``, about 13 ms of a fresh interpreter's time.
"""

from __future__ import annotations

import _pickle
import _socket
import errno
import gc
import os
import select
import struct
import threading
import time
from collections import deque
from collections.abc import Callable

from ._inherited import at_their_default, changes_since, departed_since, inherits_standard_stream, take
from ._socketpair import NO_SIGNAL
from ._template_start import (
    StartedTemplate,
    ending_signals,
    queued_signals,
    stop_forking,
    take_started,
    template_available,
)
from ._wakeup import drain, wakeup_pipe

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from typing import Any
else:
    import _signal as signal  # signal's functions without its enums (see the module's docstring)

__all__ = ["ForkedProcess", "Template", "serve", "take_template", "template_available"]

_PACKET = 4096  # more than the largest request or report, a few numbers pickled (a longer packet would be cut)
# A fork request's descriptors, as SCM_RIGHTS carries them: the worker's socket,
# journal, directory, standard output and standard error.
_FDS = struct.Struct("5i")
_FD_BYTES = _FDS.size // 5
_REAPED_WITHIN = 1.0  # seconds for a template whose socket closed to be reaped, so that its exit code is known
_PRELOAD_AFTER_MS = 50  # idle time after which the template imports what some tasks need (_preload)


class Template:
    """The pool's side of the template process. Used by the pool's loop thread only."""

    def __init__(self, started: StartedTemplate) -> None:
        self._started = started
        self.sock = started.sock
        self._poller = select.poll()
        self._poller.register(self.sock.fileno(), select.POLLIN)
        self.alive = True
        self.death_counted = False  # its workers that died starting when it died count as one failed start
        self._numbers = 0
        self._children: dict[int, ForkedProcess] = {}
        self._preloaded = False
        self.declined = False  # it declined a fork: it runs other threads (serve)

    @property
    def pid(self) -> int | None:
        return self._started.pid

    def fileno(self) -> int:
        return self.sock.fileno()

    def fork(self, worker_end: _socket.socket, journal_fd: int) -> ForkedProcess:
        """Ask for a worker serving ``worker_end``, journaling in ``journal_fd``; its process id arrives later (:meth:`read`).

        The pool then sends the worker :meth:`start_message` first.
        """
        self._numbers += 1
        child = ForkedProcess(self, self._numbers)
        request = _pickle.dumps(("fork", child.number))
        # The directory itself, through the link /proc keeps to it: "." would need search
        # permission on it, which a program run as another user may not have (sudo -u).
        directory = os.open("/proc/self/cwd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            outputs, opened = _standard_outputs()
        except BaseException:
            os.close(directory)
            raise
        try:
            fds = _FDS.pack(worker_end.fileno(), journal_fd, directory, *outputs)
            self.sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)], NO_SIGNAL)
        except OSError as error:
            if error.errno == errno.EBADF:  # another thread closed the program's output meanwhile
                raise  # a start that failed, as a refused one: the next one looks again
            child.returncode = self._died()
            return child
        finally:
            for fd in (directory, *opened):
                os.close(fd)
        self._children[child.number] = child
        return child

    def outdated(self, environ: dict[str, str]) -> bool:
        """Whether this process changed, since the template started, what a worker forked from it could not take on.

        Its user or group ids, say, or a variable of ``environ``, the
        environment a worker would be given, that a process reads only as it
        starts (``_inherited.departed_since``). Or the template declined a
        fork: it runs other threads (:func:`serve`).
        """
        return self.declined or departed_since(self._started.inherited, environ)

    @property
    def has_children(self) -> bool:
        """Whether a worker it forked may still be running (its exit not reported yet)."""
        return bool(self._children)

    def start_message(self, environ: dict[str, str]) -> tuple[str, dict[str, str], dict[str, Any] | None]:
        """What a worker forked now takes on before anything else: ``environ``, and what else changed (``_inherited``)."""
        return ("start", environ, changes_since(self._started.inherited))

    def preload(self) -> None:
        """Have the template import what some tasks need before it forks the next worker (once).

        For a prestarted pool, whose workers must be ready for any task: a
        worker forked before the template's own preload, once idle, imports
        cloudpickle inside its first task of a function sent by value, and
        that counts against the task's timeout.
        """
        if self._preloaded or not self.alive:
            return
        self._preloaded = True
        try:
            self.sock.send(_pickle.dumps(("preload",)), NO_SIGNAL)
        except OSError:
            self._died()

    def signal(self, child: ForkedProcess, signum: int) -> None:
        if child.returncode is None and self.alive:
            try:
                self.sock.send(_pickle.dumps(("signal", child.number, signum)), NO_SIGNAL)
            except OSError:
                self._died()

    def kill(self) -> None:
        """Kill the template, and with it every worker it forked; raises ``PermissionError`` if this process may not."""
        self._started.kill()

    def read(self, timeout: float | None = 0.0) -> None:
        """Take the template's reports: those waiting now, or the first within ``timeout`` (None: wait)."""
        while self.alive:
            if not self._poller.poll(None if timeout is None else timeout * 1000):
                return
            try:
                packet = self.sock.recv(_PACKET)
            except OSError:
                packet = b""
            if not packet:
                self._died()
                return
            kind, number, value = _pickle.loads(packet)
            child = self._children.get(number)
            if child is None:
                continue
            if kind == "forked":
                child.pid = value
                continue
            if kind == "refused":
                child.refused = OSError(*value)
                value = 1  # never started: it ends as a fresh interpreter that could not start would
            elif kind == "declined":
                self.declined = child.declined = True
                stop_forking(value)
                value = 1  # never started
            child.returncode = value
            del self._children[number]
            timeout = 0.0

    def _died(self) -> int:
        """The template died: its workers died with it; return how it ended, which those it never forked take on.

        A template that could not start (a ``sitecustomize`` that exits, an
        interpreter option this Python refuses) ended with an exit code: its
        workers were reported killed by ``SIGKILL``, and the user looked for
        the OOM killer. The forked ones were (parent-death signal); the others
        end as fresh interpreters that failed the same way would.
        """
        code = self._started.exit_code(_REAPED_WITHIN)
        if code is None:  # still not reaped: it closed its socket, so it is on its way out
            code = -signal.SIGKILL
        else:  # reaped: Linux gave its workers a new parent, maybe this process
            _reap_orphans([child.pid for child in self._children.values() if child.pid is not None])
        for child in self._children.values():
            if child.returncode is None and child.pid is None:
                child.returncode = code
        self._gone()
        return code

    def _gone(self) -> None:
        """The template died (or was closed): its workers died with it (parent-death signal).

        The socket stays open until :meth:`close`: the pool's selector must stop
        watching it first, or a new socket reusing its number would be confused with it.
        """
        self.alive = False
        for child in self._children.values():
            if child.returncode is None:
                child.returncode = -signal.SIGKILL
                child.with_template = True
        self._children.clear()

    def close(self) -> None:
        """Stop the template once its workers are gone: end of file, then wait for it."""
        self._gone()
        self._started.stop()


def _reap_orphans(pids: list[int]) -> None:
    """Reap those of ``pids``, workers of a template that died, that Linux made this process's children.

    It does where this process is PID 1 (a container's entry point) or a
    subreaper (``PR_SET_CHILD_SUBREAPER``): nothing else would wait for them, and
    each template's death left its workers as zombies until the program's end.
    Elsewhere init took them, and none of them is this process's to wait for.
    Each has the parent-death signal, ``SIGKILL``, pending: a thread of its own
    waits for them to end, so that a worker whose exit takes a while (its
    memory released, a file system that hangs) never holds the pool's loop.
    """
    ours = []
    for pid in pids:
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # not this process's child
            continue
        ours.append(pid)
    if not ours:
        return

    def reap() -> None:
        for pid in ours:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:  # the program reaped it first (os.wait, SIGCHLD ignored)
                pass

    try:
        threading.Thread(target=reap, name="makeparallel-orphans", daemon=True).start()
    except RuntimeError:  # no thread left, or the interpreter exits: they stay zombies until it has
        pass


def _standard_outputs() -> tuple[list[int], list[int]]:
    """What a program started now would have as its standard output and error (``inherits_standard_stream``).

    Returns the two descriptors, and those of them opened here, to close once
    sent: the program's own where a new program would inherit them, else
    ``os.devnull``, so that a file the task opens cannot take that number and
    receive what C code writes there.
    """
    outputs: list[int] = []
    opened: list[int] = []
    try:
        for fd in (1, 2):
            if not inherits_standard_stream(fd):
                fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
                opened.append(fd)
            outputs.append(fd)
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    return outputs, opened


def take_template() -> Template:
    """The template a first process task started early (``_template_start``), else a new one.

    Raises ``OSError`` if none can start.
    """
    return Template(take_started())


class ForkedProcess:
    """A worker forked by the template, behind the part of ``subprocess.Popen``'s interface the pool uses."""

    def __init__(self, template: Template, number: int) -> None:
        self.template = template
        self.number = number
        self.pid: int | None = None  # known once the template reports the fork
        self.returncode: int | None = None
        self.refused: OSError | None = None  # why the system refused to fork it, if it did
        self.declined = False  # the template runs other threads, and did not fork it: no failed start
        self.with_template = False  # it died because the template did (parent-death signal), not on its own

    def poll(self) -> int | None:
        if self.returncode is None:
            self.template.read()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import subprocess

        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired("makeparallel worker", timeout or 0.0)
            self.template.read(left)
        return self.returncode

    def terminate(self) -> None:
        self.template.signal(self, signal.SIGTERM)

    def kill(self) -> None:
        self.template.signal(self, signal.SIGKILL)


# -- in the template process ----------------------------------------------------------------


def serve(fd: int, parent_pid: int, program_mask: set[int]) -> None:
    """Fork a worker per request until the pool closes the socket; report each exit.

    Single-threaded, by design: only a process without other threads can be
    forked safely. A start-up hook may start one (a ``sitecustomize``, a
    ``.pth`` file: a tracing agent's exporter, a NumPy imported with its BLAS
    threads), and a worker forked while it held a lock would wait for that
    lock for good: where the template finds another thread as it is asked for
    a fork, it declines, and the pool starts every later worker as a fresh
    interpreter (``_template_start.stop_forking``). Interrupts go to the
    pool's process, not here (the template ignores ``SIGINT``); so does every other signal that would end it
    (``ending_signals``), which a signal to the program's process group sends
    it too (``kill -TERM -PGID``, ``systemctl kill``, a terminal's hang-up).
    Dead of one, it took its workers with it, and their tasks were reported
    killed by ``SIGKILL``, not by the signal that reached them. (It still dies
    with the program: ``SIGKILL``, from the parent-death signal its first
    lines ask for.) It keeps them blocked, from its start (a Ctrl-C as it
    imported printed its traceback), rather than ignore them: the
    dispositions its workers inherit stay what a fresh interpreter's would
    be, a handler in C that a ``sitecustomize`` set included
    (``faulthandler.register``), and its workers block only ``program_mask``,
    the signals the program blocked. The real-time signals, which queue where
    blocked, it ignores instead, those it has at their default action
    (``queued_signals``), and its workers take that back.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = _socket.socket(fileno=fd)
    wake_r, wake_w = wakeup_pipe()
    signal.set_wakeup_fd(wake_w)
    child_signal = signal.getsignal(signal.SIGCHLD)  # the program's as the template started: its workers' too
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # the wake-up pipe tells the loop
    # A program that takes its signals with sigwait or signalfd blocks them first, SIGCHLD too, and
    # the template inherited the mask: it never heard of a worker's end, and the pool waited for good.
    blocked = set(program_mask)  # for its workers
    quiet = at_their_default(queued_signals())  # ignored here, their default again in its workers
    for signum in quiet:
        signal.signal(signum, signal.SIG_IGN)  # which drops those sent as it started
    # Not blocked here where the program blocks them: a blocked signal queues though ignored.
    signal.pthread_sigmask(signal.SIG_SETMASK, {*blocked, *ending_signals()} - {signal.SIGCHLD, *quiet})
    children: dict[int, int] = {}  # pid -> the pool's number for it
    unsent: deque[bytes] = deque()  # reports the pool's socket has no room for yet, oldest first
    template_pid = os.getpid()
    poller = select.poll()
    watched = select.POLLIN
    poller.register(sock.fileno(), watched)
    poller.register(wake_r, select.POLLIN)
    idle_ms: int | None = _PRELOAD_AFTER_MS
    while True:
        wanted = (select.POLLIN | select.POLLOUT) if unsent else select.POLLIN
        if wanted != watched:
            watched = wanted
            poller.modify(sock.fileno(), watched)
        events = poller.poll(idle_ms)
        if not events and idle_ms is not None:  # idle since the first workers were forked
            idle_ms = None
            _preload()
        for ready, mask in events:
            if ready == wake_r:
                drain(wake_r)
                _reap(children, sock, unsent)
                continue
            if mask & select.POLLOUT:
                _send_reports(sock, unsent)
            if mask == select.POLLOUT:
                continue
            try:
                data, fds = _receive(sock)
            except ConnectionResetError:  # the pool closed the socket with reports of ours unread
                data, fds = b"", []
            if not data:
                os._exit(0)  # the pool closed the socket, or its process died
            request = _pickle.loads(data)
            if request[0] == "preload":
                if idle_ms is not None:
                    idle_ms = None
                    _preload()
                continue
            if request[0] == "signal":
                _, number, signum = request
                for pid, known in children.items():
                    if known == number:
                        os.kill(pid, signum)  # not reaped yet: the pid is still this child's
                continue
            number = request[1]
            threads = len(os.listdir("/proc/self/task"))
            if threads > 1:
                for fd in fds:
                    os.close(fd)
                _report(("declined", number, threads), sock, unsent)
                continue
            # The garbage collector is off in the template (from its first line, so
            # that none of its imports goes to collections); a child turns it on with
            # the template's objects in the oldest generation, as a collection would
            # have left them (frozen, then unfrozen: gc sees them all, as a fresh
            # interpreter's does), so its first collections do not walk them.
            gc.freeze()
            try:
                pid = os.fork()
            except OSError as error:  # no process left (EAGAIN), no memory: the pool hears why
                for fd in fds:
                    os.close(fd)
                _report(("refused", number, (error.errno, error.strerror)), sock, unsent)
                continue
            if pid == 0:
                gc.unfreeze()
                gc.enable()
                signal.set_wakeup_fd(-1)  # first: a SIGCHLD to the fork wrote to it closed, and printed so
                sock.close()
                os.close(wake_r)
                os.close(wake_w)
                _become_worker(
                    *fds,
                    template_pid=template_pid,
                    program_pid=parent_pid,
                    child_signal=child_signal,
                    blocked=blocked,
                    quiet=quiet,
                )
                raise SystemExit(0)  # unwinds to the top: the interpreter exits as a fresh one would
            for fd in fds:
                os.close(fd)
            children[pid] = number
            _report(("forked", number, pid), sock, unsent)


def _preload() -> None:
    """Import what a worker needs only for some tasks, so that every later fork has it.

    cloudpickle (about 17 ms to import) unpickles every function sent by value,
    ``__main__``'s included: without it here, each new worker paid that on its
    first such task, and a pool with ``max_tasks_per_child=1`` paid it on every
    task. ``logging`` (a task that logs), ``traceback`` (one that raises),
    the library's errors (with ``concurrent.futures``) and ``asyncio`` (an
    async function's coroutine runs on the worker's own loop: about 40 ms on
    a busy machine, which kept an ``imap`` of one with
    ``max_tasks_per_child=1`` at one item a chunk), which the first workers
    import only when a task needs them, likewise. Done once the
    template has been idle a moment, after the pool's first workers were
    forked, so that it never delays the first result; or before the first
    fork of a prestarted pool, when the pool asks (``Template.preload``).

    A module that fails to import here (one of the program's folders has a
    broken ``cloudpickle.py``, say) is left to the worker that needs it, which
    fails as a fresh interpreter would: the template died of it, and every
    worker with it, in the middle of its task.
    """
    for name in ("logging", "traceback", "makeparallel.errors", "cloudpickle", "asyncio"):
        try:
            __import__(name)
        except BaseException:  # noqa: BLE001  # SystemExit too: nothing a module does at import ends the template
            pass


def _program_as_parent(program_pid: int) -> Callable[[], int]:
    """``os.getppid`` for a worker: the program's process id, not the template's, as in a fresh interpreter.

    A task that signals its parent (``os.kill(os.getppid(), signal.SIGUSR1)``,
    to tell the program something) killed the template instead, and with it
    every worker. In a process a task forks, the real parent's.
    """
    worker_pid = os.getpid()
    real_getppid = os.getppid

    def getppid() -> int:
        return program_pid if os.getpid() == worker_pid else real_getppid()

    # Pickled by name, as the built-in was: ``posix.getppid``, which is this function here.
    getppid.__module__, getppid.__qualname__, getppid.__doc__ = "posix", "getppid", real_getppid.__doc__
    return getppid


def _become_worker(
    fd: int,
    journal_fd: int,
    directory: int,
    stdout: int,
    stderr: int,
    *,
    template_pid: int,
    program_pid: int,
    child_signal: Any,
    blocked: set[int | signal.Signals],
    quiet: list[int],
) -> None:
    """In the forked child: take on the pool's state of the moment (its first message), then serve as a worker.

    The worker dies with the template from the start: until the pool's
    message comes, it waits on its pipe, which a dead pool closes.
    ``child_signal``: what the template had for ``SIGCHLD`` before its own
    handler, ignored where the program ignored it (a task's ``subprocess.run``
    then gets no exit code, as in a fresh interpreter), else the default.
    ``blocked``: the signals the program blocked as the template started, which
    a fresh interpreter would have blocked too (``SIGTERM`` aside: the worker's
    main unblocks it, since the pool stops a worker with it).
    ``os.getppid()`` names the program (``program_pid``), a fresh
    interpreter's parent (:func:`_program_as_parent`). ``quiet``: the
    real-time signals the template ignores, which take their default action
    here again.
    """
    import posix  # os's functions, where pickle finds them by name (here, on Linux, it exists)

    from ._channel import Channel
    from ._parent_death import die_with_parent
    from ._process_worker import main

    for received, standard in ((stdout, 1), (stderr, 2)):
        os.dup2(received, standard)  # the program's of the moment in place of the template's
        os.close(received)
    die_with_parent(template_pid)
    os.getppid = posix.getppid = _program_as_parent(program_pid)
    signal.signal(signal.SIGCHLD, child_signal)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    for signum in quiet:  # once blocked where the program blocks them: one sent meanwhile waits, as there
        signal.signal(signum, signal.SIG_DFL)
    conn = Channel(_socket.socket(fileno=fd))
    try:
        _, environ, changes = conn.recv()
    except (EOFError, OSError):
        return  # the pool is gone: nothing to serve
    zone = os.environ.get("TZ")
    os.environ.clear()
    os.environ.update(environ)
    if os.environ.get("TZ") != zone:
        time.tzset()  # the C library's time zone, which a fresh interpreter reads from TZ as it starts
    try:
        os.fchdir(directory)
    except OSError:
        pass  # its search permission was taken away since the pool looked: it stays in the template's
    os.close(directory)
    if changes is not None:
        take(changes)  # the umask and limits, where they changed since the template started (_inherited)
    main(conn, template_pid, journal_fd)


def _reap(children: dict[int, int], sock: _socket.socket, unsent: deque[bytes]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        number = children.pop(pid, None)
        if number is not None:
            _report(("exited", number, os.waitstatus_to_exitcode(status)), sock, unsent)


def _receive(sock: _socket.socket) -> tuple[bytes, list[int]]:
    """A request, and the descriptors that came with it (what ``socket.recv_fds`` does)."""
    data, ancillary, _, _ = sock.recvmsg(_PACKET, _socket.CMSG_SPACE(_FDS.size))
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            whole = len(payload) - len(payload) % _FD_BYTES  # a truncated descriptor is dropped, as recv_fds drops it
            fds += memoryview(payload[:whole]).cast("i").tolist()
    return data, fds


def _report(message: tuple[Any, ...], sock: _socket.socket, unsent: deque[bytes]) -> None:
    """Send ``message`` to the pool after the reports ``unsent``, or keep it there while the socket is full.

    The template never waits for the pool: the pool's loop thread reads the
    reports only once it has asked for every worker it starts, and may wait
    meanwhile for a worker to read its start message, which a template
    waiting to report the fork before would never fork (a pool of 300 workers
    filled the socket's buffer with reports, and hung).
    """
    unsent.append(_pickle.dumps(message))
    _send_reports(sock, unsent)


def _send_reports(sock: _socket.socket, unsent: deque[bytes]) -> None:
    """Send the reports ``unsent``, oldest first, as long as the socket has room."""
    while unsent:
        try:
            sock.send(unsent[0], _socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            os._exit(0)  # the pool is gone
        unsent.popleft()

