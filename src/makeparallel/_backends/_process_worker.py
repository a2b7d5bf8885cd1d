"""A worker process of the ``"process"`` backend: runs the tasks the parent sends.

Two threads. The main thread runs tasks in the order they came, and sends each
result back as soon as its task ends. While it is idle it reads the pipe itself,
so a task reaches it without waking another thread first (that hand-over cost
a fifth of a no-op's round trip). While a task runs, a reader thread takes the
messages off the pipe instead, so that a cancel reaches the task, and it exits
the process the moment the pipe closes (the parent is gone: no orphan). One
lock makes sure only one of the two reads at a time.

Messages are pickled tuples, each followed by its out-of-band buffers:

    parent -> worker   ("start", environ, changes)         first, for a worker forked from the template
                                                           (read by _template, before this module runs)
                       ("path", (sys_path, pins, filters))  next, for a worker forked from the template;
                                                           later, when the parent's sys.path, its pinned
                                                           modules (_PinnedModules) or its warning filters
                                                           changed
                       ("setup", initializer, initargs, argv, main, ignore_sigint, settings, identity,
                        cpu_share, thread_limits)
                                                           then, always: the initializer pickled, or None;
                                                           the program's sys.argv, and its __main__'s file
                                                           and name (_main_module); whether it ignores
                                                           Ctrl-C; its recursion limit, int digits, warning
                                                           filters (_interpreter_settings); the worker's
                                                           name and the program's (_worker_identity);
                                                           this worker's usable CPUs, and the thread-count
                                                           variables the pool set in its environment
                                                           (_cpu_share)
                       ("tasks", [(task_id, name, function, data, buffer_sizes, timed), ...])
                       ("cancel", task_id, error)
                       ("output_failed", task_id, stream, errno, message)  the task's write to the parent's
                                                           stream failed so
                       ("stop",)                           finish the tasks sent, then exit
    worker -> parent   ("ready", pid, finders)             set up: tasks may start; its sys.meta_path
                       ("init_failed", (data, text, description))  the initializer raised; exiting
                       ("started", task_id)                a timed task starts: its clock starts
                       ("done", [(task_id, ok, data, buffer_sizes, seconds), ...])  a failure's data is
                                                           (data, text, description): its error pickled, its
                                                           traceback and "Type: message", read apart
                                                           (_failure_sent)
                       ("progress", task_id, fraction, message)
                       ("log", attributes, extras, metadata, owner)  a log record: its own attributes, each a
                                                           str, a number or None; its extras each pickled
                                                           alone; the metadata of a task submitted in the
                                                           worker (or an extra's), each value pickled alone,
                                                           or None; the id of the parent's task that logged
                                                           it, whose metadata it takes there, or None
                                                           (_worker_logging)
                       ("output", stream, text)            print() and friends
                       ("output", stream, data, encoding)  bytes: sys.stdout.buffer, with the encoding
                                                           the stream says (for a parent's StringIO)
                       ("partial", task_id, data, buffer_sizes)  a map chunk's finished slice

A map chunk also writes each item's result to the worker's crash journal,
shared memory the parent reads if this process dies (``_crash_journal``).

Ctrl-C does nothing here (:func:`_interrupted`): it reaches the parent, which decides what to cancel.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import os
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from .. import _at_fork_in_child, _serialization
from .._coroutines import is_coroutine, run_here
from .._cpu_share import set_pool_thread_limits, set_worker_share
from .._process_context import apply_values
from .._remote_errors import described, mark_unpickling_failure
from .._states import CANCELLED, RUNNING
from .._task_context import _local, wake_waits_of
from .._worker_finders import installed as installed_finders
from . import _interpreter_settings as interpreter_settings
from . import _worker_identity as worker_identity
from ._channel import Channel
from ._crash_journal import JournalWriter
from ._main_module import stand_in_for_main
from ._output_relay import OutputRelay, flush_c_stdio
from ._parent_death import ask_again_if_changed, die_with_parent, still_die_with_parent
from ._process_tree import stop_descendants
from ._wakeup import drain, wakeup_pipe

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from typing import Any
else:
    import _signal as signal  # signal's functions without its enums (``_template``)

__all__ = ["main"]

_STOP = ("stop", None)  # in the inbox: the parent is gone, or asked this worker to end
_WATCH_AFTER = 0.02  # seconds a task runs before the reader thread watches the pipe


class _RemoteTask:
    """What ``report_progress``, ``check_cancelled`` and friends see in a worker.

    It takes weak references, as a handle does: ``get_current_task_id()`` keeps
    it by its id, so that ``report_progress(task_id=...)`` from a thread the
    task started reports for it.
    """

    __slots__ = ("__weakref__", "_id", "_journal", "_state", "_stop_error", "_worker", "name", "on_stop")

    def __init__(self, task_id: int, name: str, worker: _Worker) -> None:
        self.on_stop: Any = None  # cancels the task's coroutine, while one runs
        self._id = task_id
        self.name = name
        self._state = RUNNING
        self._stop_error: BaseException | None = None
        self._worker = worker
        self._journal = worker.journal

    def get_task_id(self) -> int:
        return self._id

    def _report_progress(self, fraction: float, message: str | None) -> None:
        # A str subclass only this worker imports could not be unpickled by the pool's loop thread.
        text = None if message is None else str.__str__(message)
        self._worker.send(("progress", self._id, fraction, text), [])

    def _send_partial(self, results: list[Any]) -> None:
        """Send results a map chunk finished."""
        data, buffers = _serialization.dumps(results)
        sizes = [memoryview(b).nbytes for b in buffers]
        self._worker.send(("partial", self._id, data, sizes), buffers)

    def _pickle_error(self, value: Any) -> str | None:
        """Why ``value`` cannot be pickled, or ``None`` if it can."""
        try:
            _serialization.dumps(value)
        except Exception as error:
            return described(error)
        return None

    def _raise_if_stopped(self) -> None:
        if self._stop_error is not None:
            raise type(self._stop_error)(*self._stop_error.args)


class _Worker:
    def __init__(self, conn: Channel, journal: JournalWriter) -> None:
        self._pid = os.getpid()
        self._conn = conn
        self.journal = journal
        self._send_lock = threading.Lock()
        self._inbox: deque[Any] = deque()
        self._mail_lock = threading.Lock()  # guards the inbox, _busy and _cancelled
        self._busy = False  # the main thread is not reading the pipe: the reader thread does
        self._busy_period = 0  # counts the times _busy became true
        self._became_busy = threading.Condition(self._mail_lock)
        self._reader_parked = False  # waits for _busy: the main thread wakes it
        self._reader_polling = False  # watches the pipe: the main thread kicks it when it goes idle
        self._kick_r, self._kick_w = wakeup_pipe()
        self._read_lock = threading.Lock()  # held by the thread reading the pipe
        self._pipe = select.poll()  # whether a message waits on the pipe, asked under the read lock
        self._pipe.register(conn.fileno(), select.POLLIN)
        self._cancels_read = 0  # the journal's count of cancels sent, when the main thread last read the pipe
        self._cancelled: dict[int, BaseException] = {}  # tasks cancelled before they started
        # The last tasks that ran: a cancel that crossed one's result on the pipe is
        # dropped, not kept for good. The parent cancels only tasks whose results it
        # has not received, at most a window of tasks back (32): 1,024 is plenty.
        self._ended: deque[int] = deque(maxlen=1024)
        self._current: _RemoteTask | None = None
        self._flush_c_stdio = flush_c_stdio()
        self.relays: tuple[OutputRelay, ...] = ()  # sys.stdout's and sys.stderr's, once main() put them there
        self._output_failed = False  # a relay was told the parent's stream failed, for the task running

    def send(self, message: tuple[Any, ...], buffers: Sequence[Any] = ()) -> None:
        if os.getpid() != self._pid:  # a process the task forked (a fork-based Pool's) shares the pipe
            _write_from_a_forked_copy(message)
            return
        with self._send_lock:  # threads of a task may log while it sends its result
            self._conn.send(message, buffers)

    def serve(self) -> None:
        """Set up, then run tasks until the parent is gone or asks this worker to stop.

        Each result is sent the moment its task ends: holding results back to
        batch them would lose finished work if a later task crashed the worker,
        and would blame the wrong task for the crash.
        """
        try:
            threading.Thread(target=self._read_while_busy, name="makeparallel-worker-reader", daemon=True).start()
        except RuntimeError as error:
            # No thread left: the user's process limit counts threads, so there it is this
            # thread that fails rather than the fork. A start the system refused, not a crash.
            self.send(("refused", str(error)))
            os._exit(1)
        try:
            while True:
                kind, payload = self._next()
                if kind == "task":
                    entry, buffers = self._run(*payload)
                    if os.getpid() != self._pid:  # the task forked, and its copy returned here
                        from .._fork_child import leave_forked_child

                        leave_forked_child(f"task {payload[0]} ({payload[1]})", None, not entry[1])
                    self._flush_output()
                    if self._output_failed:  # the next task writes to the parent's stream again, which may be back
                        self._output_failed = False
                        for relay in self.relays:
                            relay.fail(None, "")
                    self.send(("done", [entry]), buffers)
                elif kind == "path":
                    take_path(*payload)
                elif kind == "setup":
                    self._set_up(*payload)
                else:
                    return
        except ConnectionError:
            # The pool closed the pipe (it stopped) before this worker said it was ready, or
            # sent a result: it died of BrokenPipeError, exit code 1, its traceback wherever
            # its sys.stderr went (an initializer's log). Idle, it ends as at an end of file.
            return

    def _set_up(
        self,
        initializer: bytes | None,
        initargs: bytes,
        argv: list[str],
        main: tuple[str | None, str | None],
        ignore_sigint: bool,
        settings: Any,
        identity: tuple[str, str],
        cpu_share: int,
        thread_limits: dict[str, str],
    ) -> None:
        """Take on the program's ``sys.argv``, ``__main__``, Ctrl-C and settings, and this worker's share of the CPUs; run the pool's initializer, then say so.

        The worker takes its name first (``identity``: its own and the
        program's, ``_worker_identity``), so that the initializer runs under it.
        If the initializer raises, report it and exit.
        """
        worker_identity.take_on(*identity)
        # The size of every pool its tasks (and the initializer) start; a message, not a variable
        # of this worker's environment, which the programs a task starts would inherit. So are the
        # names of the thread counts the pool set there, which such a pool sets anew from the share.
        set_worker_share(cpu_share)
        set_pool_thread_limits(thread_limits)
        sys.argv = argv
        stand_in_for_main(*main)
        interpreter_settings.take_on(settings)
        if ignore_sigint:  # as the program does (_inherited.interrupts_ignored), and the programs a task runs
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if initializer is not None:
            try:
                fn, args = _unpickled(initializer, initargs, [])
                value = fn(*args)
                if is_coroutine(value):  # an async def's, run as a task's is: on this thread's loop, the tasks' too
                    # Its loop task runs in a copy of this thread's context: what it set there is
                    # set here too, where the tasks run (in a copy of it when they carry variables).
                    for variable, set_value in run_here(_with_its_context(value), None).items():
                        variable.set(set_value)
            except BaseException as error:
                self._flush_output()
                try:
                    data = _serialization.dumps_in_band(error)
                except BaseException as unpicklable:  # SystemExit too, as for a task's result (_run)
                    from ..errors import TaskError  # concurrent.futures: only a worker that fails pays for it

                    data = _serialization.dumps_in_band(
                        TaskError(f"{described(error)} (it cannot be pickled: {described(unpicklable)})")
                    )
                self.send(("init_failed", _failure_sent(data, error)))
                os._exit(1)
            still_die_with_parent()  # an initializer that dropped privileges cleared the request
            self._flush_output()
        # A forked worker's pid may reach the parent first this way; its import finders decide what
        # travels by value (_worker_finders): the initializer's count.
        self.send(("ready", os.getpid(), installed_finders()))

    def _flush_output(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # the parent's stream failed (the relay raises it), or one a task put there
                pass
        self._flush_c_stdio()

    def _run(
        self, task_id: int, name: str, function: bytes, data: bytes, buffers: list[Any], timed: bool
    ) -> tuple[tuple[Any, ...], list[Any]]:
        ask_again_if_changed()  # a thread of an earlier task's changed the ids since it ended
        task = _RemoteTask(task_id, name, self)
        with self._mail_lock:  # a cancel finds the task current, or in _cancelled: never neither
            stop_error = self._cancelled.pop(task_id, None)
            if stop_error is None:
                self._current = task
        if stop_error is not None:  # cancelled before it started: never run it
            self._ended.append(task_id)
            return (task_id, False, (b"", "", ""), [], 0.0), []
        self.journal.started(task_id)  # dying from now on fails this task; before, it is sent again
        if timed:
            self.send(("started", task_id))  # its timeout counts from now
        _local.task = task
        started = time.perf_counter()
        try:
            try:
                fn, call = _unpickled(function, data, buffers)
            except Exception as error:
                mark_unpickling_failure(error)  # none of the task's code ran: a map runs its items again, apart
                raise
            if len(call) == 2:
                value, ok = _call(fn, call[0], call[1], task), True
            else:  # with the submitter's context variables, set in a context of its own
                value, ok = contextvars.copy_context().run(_call, fn, call[0], call[1], task, call[2]), True
        except BaseException as error:  # SystemExit too: it ends the task, not the worker
            value, ok = error, False
        finally:
            seconds = time.perf_counter() - started
            _local.task = None
            self._ended.append(task_id)  # first: a cancel finds the task current, or ended
            self._current = None
            ask_again_if_changed()  # a thread of the task's changed the ids, clearing this thread's request
        try:
            result, result_buffers = _serialization.dumps(value)
        except BaseException as error:
            # SystemExit too (a __reduce__ that calls sys.exit()): it fails the task as a
            # TypeError there does. Let through, it ended the worker, and the task failed
            # as a crash with the exit code the __reduce__ gave.
            from ..errors import TaskError, TaskSerializationError  # see _set_up

            detail = described(error)
            if ok:
                sent: BaseException = TaskSerializationError(
                    f"the result of task {task_id} ({name}) could not be pickled to send it "
                    f"back from the worker process: {detail}. Return picklable data, or use "
                    "backend='thread', which needs no pickling"
                )
                value, ok = None, False  # no error the task raised: no traceback of it goes
            else:  # the task's own exception cannot travel: send what describes it
                sent = TaskError(f"task {task_id} ({name}) raised {described(value)} ({detail})")
            result, result_buffers = _serialization.dumps(sent)
        sizes = [memoryview(b).nbytes for b in result_buffers]
        if ok:
            return (task_id, True, result, sizes, seconds), result_buffers
        return (task_id, False, _failure_sent(result, value), sizes, seconds), result_buffers

    def _next(self) -> tuple[str, Any]:
        """The next thing to do: from the inbox, else read from the pipe here (idle).

        Before a task from the inbox starts (a short task sent ahead behind
        another, in a window), the pipe is read if the parent has sent a cancel
        since it was last read (its count in the journal moved): a task
        cancelled while the one before it ran is dropped when its turn comes,
        not run. A cancel still on its way when the task starts reaches it
        running. Polling the pipe before every such task instead cost no-op
        throughput about 5%; reading the count costs about 0.15 us a task.
        """
        while True:
            if self._inbox and self.journal.cancels_sent() != self._cancels_read:
                self._read_arrived()
            with self._mail_lock:
                if self._inbox:
                    if not self._busy:
                        self._busy = True
                        self._busy_period += 1
                        if self._reader_parked:
                            self._became_busy.notify()
                    item: tuple[str, Any] = self._inbox.popleft()
                    return item
                self._busy = False
                kick = self._reader_polling
            if kick:  # it watches the pipe: it must stop before this thread reads
                try:
                    os.write(self._kick_w, b"!")
                except BlockingIOError:
                    pass
            with self._read_lock:
                with self._mail_lock:
                    if self._inbox:
                        continue  # the reader thread read it while this waited for the lock
                try:
                    self._take(self._conn.recv())
                except (EOFError, OSError):
                    return _STOP  # the parent is gone; idle, this worker ends normally

    def _read_arrived(self) -> None:
        """Act on the messages that arrived and wait to be read, without waiting for more."""
        self._cancels_read = self.journal.cancels_sent()  # first: a cancel sent from now on moves it again
        conn = self._conn
        with self._read_lock:
            try:
                while conn.buffered() or self._pipe.poll(0):
                    self._take(conn.recv())
            except (EOFError, OSError):
                self._parent_gone()

    def _read_while_busy(self) -> None:
        """Read the pipe while a task runs (the main thread reads it when idle).

        The pipe is watched only once a task has run for ``_WATCH_AFTER``: a
        thread watching it during short tasks woke with the main thread at every
        message and took the GIL from it. A cancel or a closed pipe reaches a
        running task that much later.
        """
        conn = self._conn
        pipe_or_kick = select.poll()
        pipe_or_kick.register(conn.fileno(), select.POLLIN)
        pipe_or_kick.register(self._kick_r, select.POLLIN)
        try:
            while True:
                with self._mail_lock:
                    self._wait_for_a_long_task_locked()
                    self._reader_polling = True
                with self._read_lock:
                    ready = self._busy and conn.buffered()
                if not ready:
                    pipe_or_kick.poll()  # without the read lock: the main thread may go idle and read
                with self._mail_lock:
                    self._reader_polling = False
                drain(self._kick_r)
                with self._read_lock:
                    if not self._busy or not (conn.buffered() or self._pipe.poll(0)):
                        continue
                    self._take(conn.recv())
        except (EOFError, OSError):
            self._parent_gone()

    def _wait_for_a_long_task_locked(self) -> None:
        """Return once the main thread has been busy for ``_WATCH_AFTER`` seconds on end."""
        while True:
            if not self._busy:
                self._reader_parked = True
                self._became_busy.wait()
                self._reader_parked = False
                continue
            period = self._busy_period
            self._became_busy.wait(_WATCH_AFTER)  # nobody notifies: a short task ends meanwhile
            if self._busy and self._busy_period == period:
                return

    def _take(self, message: tuple[Any, ...]) -> None:
        """Act on a message from the parent, read under the read lock (a task's buffers follow it)."""
        kind = message[0]
        if kind == "tasks":
            conn = self._conn
            tasks = [
                ("task", (task_id, name, function, data, [conn.recv_frame() for _ in sizes], timed))
                for task_id, name, function, data, sizes, timed in message[1]
            ]
            self._post(tasks)
        elif kind == "cancel":
            self._cancel(message[1], message[2])
        elif kind == "output_failed":
            _, task_id, stream, code, text = message
            current = self._current
            if current is not None and current._id == task_id:  # not a task's that ended since: the next may write
                self.relays[stream].fail(code, text)  # whatever a task put in its place
                self._output_failed = True
        elif kind == "path":
            self._post([("path", message[1])])
        elif kind == "setup":
            self._post([("setup", message[1:])])
        elif kind == "stop":
            self._post([_STOP])

    def _post(self, items: list[tuple[str, Any]]) -> None:
        with self._mail_lock:
            self._inbox.extend(items)

    def _parent_gone(self) -> None:
        """The parent closed the pipe or died: never outlive it.

        An idle worker ends normally (its interpreter shuts down cleanly); one still
        running a task ends at once, task and all, and the processes its tasks
        started with it, as at a ``SIGTERM`` (:func:`_terminated`): at a shutdown
        with a task running, one whose reader thread watched the pipe ended here
        first, and left them running, re-parented to init.
        """
        if self._current is not None:
            stop_descendants()
            self._flush_output()
            os._exit(0)
        with self._mail_lock:
            self._inbox.appendleft(_STOP)

    def _cancel(self, task_id: int, error: BaseException) -> None:
        """Stop task ``task_id``: the running one at its next check, any other before it starts.

        A task that already ended is left alone. One not seen yet is stopped when
        it comes: the parent may send its cancel first, from another thread.
        """
        with self._mail_lock:
            current = self._current
            if current is None or current._id != task_id:
                if task_id not in self._ended:
                    self._cancelled[task_id] = error
                return
            current._stop_error = error
            current._state = CANCELLED
        wake_waits_of(current)  # the waits it is blocked in end, and raise
        if current.on_stop is not None:
            current.on_stop()


async def _with_its_context(coroutine: Any) -> contextvars.Context:
    """Run the initializer's ``coroutine``; return the context it ran in, with what it set.

    A sync initializer's ``ContextVar.set`` stays in the worker thread's context,
    which the tasks see; the loop runs a coroutine in a copy, gone with it.
    """
    await coroutine
    return contextvars.copy_context()


def _call(fn: Any, args: Any, kwargs: Any, task: _RemoteTask, values: Any = None) -> Any:
    """Call the task's function; run the coroutine it returns, if it does, on this worker's loop."""
    if values is not None:
        apply_values(values)
    value = fn(*args, **kwargs)
    return run_here(value, task) if is_coroutine(value) else value


class _PinnedModules:
    """A meta path finder: a module the parent pinned (``_serialization.pins``), from its folders.

    A top-level module the parent loaded through a relative ``sys.path``
    entry (``''``, the working directory, which the parent may have changed
    since this worker started in it): along its ``sys.path``, the worker
    found another module of the name, or none, and ran other code than the
    parent's with no error. A namespace package, from the folders of its
    portions, and each module the parent loaded in one, from its own folder.
    """

    pins: dict[str, tuple[str, ...]] = {}
    #: The parent's sys.path, as this worker took it: the entries a task added since are not in it.
    taken: list[str] = []

    @classmethod
    def find_spec(cls, name: str, path: Any = None, target: Any = None) -> Any:
        folders = cls.pins.get(name)
        if folders is None:
            return None
        from importlib.machinery import PathFinder

        if "." in name:  # a module of a namespace package: in its package's folder there
            package = name.split(".")[:-1]
            return PathFinder.find_spec(name, [os.path.join(folder, *package) for folder in folders])
        spec = PathFinder.find_spec(name, list(folders))
        if spec is not None and spec.loader is None and spec.submodule_search_locations is not None:
            spec = PathFinder.find_spec(name, _namespace_search(folders, sys.path))  # its other portions too
            if spec is not None and spec.loader is None and spec.submodule_search_locations is not None:
                _keep_portions(spec)
        return spec

    @classmethod
    def invalidate_caches(cls) -> None:
        pass


def _namespace_search(folders: tuple[str, ...], path: Any) -> list[str]:
    """Where a pinned namespace package's portions are: ``path``, with its ``folders`` for the parent's ``''``.

    The parent's relative entries (``''``) are this worker's directory, not
    the parent's: in place of the first one, the pinned folders that are no
    entry of ``path`` come first, then the entry as this worker finds it.
    Every other entry keeps its place, one the parent or a task put before
    it (``sys.path.insert(0, ...)``) included.
    """
    absolute = {entry for entry in path if isinstance(entry, str) and os.path.isabs(entry)}
    stand_in = [folder for folder in folders if folder not in absolute]
    search: list[str] = []
    for entry in path:
        if not isinstance(entry, str):
            continue
        if stand_in and not os.path.isabs(entry) and entry in _PinnedModules.taken:
            search += stand_in
            stand_in = []
        search.append(entry)
    return search + stand_in


def _keep_portions(spec: Any) -> None:
    """Have a pinned namespace package look for its portions again where :func:`_namespace_search` says.

    Its path is looked for again when ``sys.path`` changes, or the import
    caches are invalidated (:func:`take_path`). Along ``sys.path``, whose
    ``''`` is this worker's directory, it took that directory's folder of its
    name for the parent's. It looks along ``sys.path`` with the folders
    pinned at that moment in the place of the parent's ``''``
    (:func:`_namespace_search`; along ``sys.path`` as it is once pinned no
    more). The path keeps its type, made with this finder
    (``importlib.resources`` reads a namespace package's only as that type);
    where it takes no finder (another Python's path than that of 3.10 to
    3.13), it is left as it is, and is looked for again along ``sys.path``.
    """
    from importlib.machinery import PathFinder

    def find(name: str, parent_path: Any) -> Any:
        folders = _PinnedModules.pins.get(name)
        if folders is not None:  # else pinned no more: along sys.path, as any other
            parent_path = _namespace_search(folders, parent_path)
        found = PathFinder.find_spec(name, list(parent_path))
        if found is not None and found.submodule_search_locations is not None:
            found.submodule_search_locations = list(found.submodule_search_locations)  # taken as they are
        return found

    locations = spec.submodule_search_locations
    try:
        spec.submodule_search_locations = type(locations)(spec.name, list(locations), find)
    except TypeError:
        pass


def take_path(path: list[str], pins: dict[str, tuple[str, ...]], filters: Any) -> None:
    """Make ``path`` this worker's ``sys.path`` and ``filters`` its warning filters; have its folders read again.

    A module named in ``pins`` is imported from the folders given there
    (:class:`_PinnedModules`); one this worker imported from others (a
    task's own import, from its working directory, or the parent's module
    before it was imported again elsewhere) is forgotten, with its
    submodules and the functions kept unpickled, so that the next task that
    needs it imports the parent's. A namespace package is kept, with what
    its modules hold (an initializer's state): its path is looked for again.

    Folders listed before may hold new modules now, and a folder missing then
    may exist now. ``importlib.invalidate_caches()`` does this, but from Python
    3.13 it also imports ``importlib.metadata`` (with ``inspect``, ``zipfile``
    and ``typing``: about 40 ms) to clear that module's caches, which a worker
    that never imported it cannot have: every new worker paid for it before
    its first task. Where it is not loaded, the same is done without it: each
    meta path finder's and each path entry finder's ``invalidate_caches()``; the
    path entries with no finder (a folder missing then) or a relative path (the
    directory changed) forgotten, as ``PathFinder`` forgets them; and its
    namespace packages' epoch moved on, so that each reads its folders again
    (a private counter, read where it exists, as ``PathFinder`` moves it).
    """
    sys.path[:] = path
    _PinnedModules.taken = list(path)
    before, _PinnedModules.pins = _PinnedModules.pins, pins  # one imported again elsewhere is pinned no more
    if pins and _PinnedModules not in sys.meta_path:
        sys.meta_path.insert(0, _PinnedModules)
    for name, folders in pins.items():
        if name not in sys.modules or before.get(name) == folders:  # checked, or imported through the pin
            continue
        spec = getattr(sys.modules[name], "__spec__", None)
        if "." in name:
            elsewhere = (_serialization.submodule_folder(name, spec),) != folders
        else:  # a namespace package stays: its path is looked for again in its new folders (_keep_portions)
            elsewhere = not _serialization.is_namespace(spec) and _serialization.module_folders(spec) != folders
        if elsewhere:
            # Listed from a copy made in one C call: gone through in Python, an import by another
            # thread (one a task left running) raised "dictionary changed size during iteration".
            for loaded in [loaded for loaded in list(sys.modules) if loaded == name or loaded.startswith(name + ".")]:
                del sys.modules[loaded]
            _serialization.forget_loaded_functions()  # a function of the old copy pickles as one of the new
    interpreter_settings.take_filters(filters)  # the program's, as they stand at its task's submission
    if "importlib.metadata" in sys.modules:
        importlib.invalidate_caches()
        return
    from importlib.machinery import PathFinder

    for meta_finder in sys.meta_path:
        if meta_finder is not PathFinder and hasattr(meta_finder, "invalidate_caches"):
            meta_finder.invalidate_caches()
    cache = sys.path_importer_cache
    for entry, finder in list(cache.items()):
        if finder is None or not os.path.isabs(entry):
            del cache[entry]
        elif hasattr(finder, "invalidate_caches"):
            finder.invalidate_caches()
    namespace_path = getattr(sys.modules.get("_frozen_importlib_external"), "_NamespacePath", None)
    if hasattr(namespace_path, "_epoch"):
        namespace_path._epoch += 1  # type: ignore[union-attr]


def _write_from_a_forked_copy(message: tuple[Any, ...]) -> None:
    """Write what a process the task forked prints or logs to the worker's own descriptors 1 and 2.

    Sent on the worker's pipe, its messages interleaved with the worker's
    (a line of 60 KB in pieces): the parent's loop thread could not read them,
    and every process task failed until the program restarted. What else it
    would send (progress, results) is the worker's to send, and is dropped.
    """
    kind = message[0]
    if kind == "output":
        text = message[2]
        descriptor = 1 if message[1] == 0 else 2
    elif kind == "log":
        record = message[1]
        text = f"{record.get('levelname')}:{record.get('name')}:{record.get('msg')}\n"
        descriptor = 2
    else:
        return
    data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    try:
        while data:
            data = data[os.write(descriptor, data) :]
    except OSError:
        pass  # closed: nowhere to write


def main(conn: Channel, parent_pid: int, journal_fd: int, unblock_interrupts: bool = False) -> None:
    """Serve tasks on ``conn`` until the parent closes it; journal map items in ``journal_fd``.

    ``unblock_interrupts``: a fresh interpreter starts with Ctrl-C blocked,
    to unblock once the worker's own handler is in place (the program had
    not blocked it); a worker forked from the template has it ignored till then.

    The parent's ``sys.path`` is this worker's (from a fresh interpreter's
    command line, or a message to a forked one before its set-up), so its modules
    import. Every log record is forwarded (the root logger here is at DEBUG):
    the parent's loggers decide, as they are configured at the time, which to
    emit.
    ``print()`` output is relayed to the parent's ``sys.stdout`` and ``sys.stderr``.
    """
    die_with_parent(parent_pid)
    # Not handed on to the programs a task starts (os.system, subprocess with close_fds=False):
    # one that outlived the worker held its pipe open, and the parent, which learns of the
    # worker's death from the pipe's end of file, failed its task only once that program ended.
    os.set_inheritable(conn.fileno(), False)
    signal.signal(signal.SIGINT, _interrupted)
    signal.siginterrupt(signal.SIGINT, False)  # SA_RESTART: most system calls go on, as with the signal ignored
    if unblock_interrupts:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    journal = JournalWriter(journal_fd)
    os.close(journal_fd)  # the mapping keeps the file
    worker = _Worker(conn, journal)
    sys.stdout, sys.stderr = worker.relays = (
        OutputRelay(0, 1, worker.send, sys.stdout),
        OutputRelay(1, 2, worker.send, sys.stderr),
    )
    signal.signal(signal.SIGTERM, functools.partial(_terminated, worker))
    # The pool stops a worker with it (a timeout, a forced cancel), though the program blocks it
    # (sigwait, signalfd): blocked, the worker ran on until the SIGKILL after it, its output lost.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    _at_fork_in_child(functools.partial(_leave_the_worker_behind, worker))
    # Each once its module is imported: most tasks never log, and few import multiprocessing (6 ms and more).
    _once_imported(
        {"logging": functools.partial(_forward_logs, worker.send), "multiprocessing.process": worker_identity.name_in}
    )
    worker.serve()


def _forward_logs(send: Callable[[tuple[Any, ...]], None], module: Any) -> None:
    """Forward every log record to the parent, from the moment ``logging`` (``module``) is imported here.

    ``logging`` (with the ``re``, ``traceback`` and ``string`` it imports) was
    the largest import of a cold worker before its first task, and most tasks
    never log. So unless the template imported it already, the forwarding
    handler is installed when a task (or a module it imports) first imports
    ``logging`` (:func:`_once_imported`), so no record is logged before the
    handler is there.
    """
    from ._worker_logging import forward_records

    forward_records(send)


def _once_imported(actions: dict[str, Callable[[Any], None]]) -> None:
    """Call each of ``actions`` with the module it is keyed by: now if imported, else once it is.

    An entry of ``sys.meta_path`` (:class:`_AfterImport`) wraps the module's
    loader, which calls the action once the module has run and before the
    importing code gets the module.
    """
    waiting = {}
    for name, action in actions.items():
        module = sys.modules.get(name)
        if module is None:
            waiting[name] = action
        else:
            action(module)
    if waiting:
        sys.meta_path.insert(0, _AfterImport(waiting))


class _AfterImport:
    """A ``sys.meta_path`` entry that has each module it names call an action once imported (the first time)."""

    def __init__(self, actions: dict[str, Callable[[Any], None]]) -> None:
        # It stays in sys.meta_path once they are done: removing it could skip a finder another thread iterates.
        self._actions = actions

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        action = self._actions.pop(name, None)  # one lookup, for every module imported here (atomic)
        if action is None:
            return None
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = None if finder is self or find_spec is None else find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _CallAfter(spec.loader, action)
                return spec
        return None


class _CallAfter:
    """A loader that runs the module's own, then calls an action with the module."""

    def __init__(self, loader: Any, action: Callable[[Any], None]) -> None:
        self._loader = loader
        self._action = action

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = module.__spec__.loader = self._loader  # what the module keeps is its own loader
        self._loader.exec_module(module)
        self._action(module)


def _leave_the_worker_behind(worker: _Worker) -> None:
    """In a process the task forks (a fork-based ``Pool``'s): SIGTERM and Ctrl-C as by default, unlocked output relays, no pipe.

    With the worker's handler, ``Pool.terminate()`` waited for good: CPython
    ran it late, after the child blocked on the Pool's lock (a plain program
    with a Python SIGTERM handler hangs the same way). With the worker's
    Ctrl-C handler, which does nothing, the child ran on after a Ctrl-C had
    ended the program, re-parented to init, where the thread backend's
    children stop with the program (one the program ignores it in keeps it
    ignored, as its own children would). A relay's lock,
    held by another thread of the task as it forked, made the child's first
    ``print()`` wait for good. And the worker's end of its pipe, which the
    child never uses (:meth:`_Worker.send`), kept the pipe open in it: the
    parent learns of the worker's death from its end of file, and a worker
    that died leaving such a child alive (a helper process it started) failed
    its task only once the child had ended, or never.
    """
    worker._conn.close()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if signal.getsignal(signal.SIGINT) is _interrupted:  # not the task's own, nor ignored as the program does
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, OutputRelay):
            stream._lock = threading.Lock()


def _failure_sent(data: bytes, error: BaseException | None) -> tuple[bytes, str, str]:
    """What goes to the parent for a failure: ``data``, the error pickled; its traceback as text; its ``Type: message``.

    The text and the description travel beside the pickle, not in it: the
    parent may be unable to unpickle the error (its class, one of its chain's,
    an attribute's or a group member's from a module only this worker
    imports), and then still tells what was raised and where
    (``_process._settle``). Unpickled whole, the pair went with it. ``error``
    ``None``: no error the task raised (a result that could not be pickled).
    """
    if error is None:
        return data, "", ""
    import traceback  # with logging: imported only when needed (see _forward_logs)

    return data, "".join(traceback.format_exception(error)), described(error)


def _unpickled(function: bytes, data: bytes, buffers: list[Any]) -> tuple[Any, Any]:
    """A task's function and call, unpickled: the modules they need are imported now.

    Meanwhile a function of a module still being imported cannot be sent to
    a worker from this (main) thread (``_serialization.unpickling_a_task``).
    """
    _serialization.unpickling_a_task = True
    try:
        return _serialization.load_function(function), _serialization.loads(data, buffers)
    finally:
        _serialization.unpickling_a_task = False


def _interrupted(signum: int, frame: Any) -> None:
    """Ctrl-C in a worker: nothing; it reaches the parent too, which decides what to cancel.

    Not ``SIG_IGN``, which a program the task runs (``subprocess.run``) would
    inherit: a Ctrl-C at the terminal then left it running after the program
    had ended, where on the thread backend it stops with the program. A handler
    is reset to the default by ``exec``.
    """


def _terminated(worker: _Worker, signum: int, frame: Any) -> None:
    """Stopped by the parent (a timeout, ``cancel(force=True)``): send the output first.

    Not if the parent stops a task that has ended since (the journal says
    which), however many ended after it: the signal, sent as the task
    ended, would have ended the one running then, which failed as crashed.
    The processes its tasks started go first (``_process_tree``): left, they
    outlived the task, and the program.
    """
    current = worker._current
    if worker.journal.declines(None if current is None else current._id, worker._ended):
        return
    try:
        stop_descendants()  # before the output, which a blocked stream may hold past the SIGKILL
        worker._flush_output()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

