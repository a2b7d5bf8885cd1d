"""The ``"process"`` backend: a persistent pool of worker processes, for pure-Python CPU work.

Data flow::

    submit() --pickle, then queue--> queues[priority] --wake--> loop thread
        |                                                        |  one pipe per worker,
        |         handle settles <--results, progress, logs---   |  owned by the parent
        |                                                        v
        +--- a small task, nothing queued, a worker idle --> worker process: run tasks in order

Why it is built this way (the lessons of ``ProcessPoolExecutor``, loky and pebble):

* One pipe per worker, owned by the parent, and one loop thread that waits on
  all of them and on a wake-up pipe. Dispatch *is* the assignment: the parent
  always knows which task each worker runs, so a dead worker fails exactly its
  own task, and no lock is shared with the workers (none can be left held by a
  killed process).
* A worker gets one task at a time, so queued tasks start by priority; once
  tasks prove short (under a millisecond on average), it gets a window of them
  (every idle worker first, and no more than its fair share of the queue), so
  that it never waits for a round trip; what goes ahead stays under 64 KiB, so
  that a worker which reads nothing (a C call holding its GIL) never blocks the
  loop's sends. A worker still running its set-up (the pool's initializer) is
  sent nothing: the tasks given to it are held here until it is ready, and a
  worker left idle meanwhile takes them. With nothing queued, a small task is
  sent straight to an idle worker by the submitting thread. A task with
  a timeout is sent only to an idle worker and nothing is sent behind it, so its
  clock starts when it starts.
* At a timeout, or ``cancel(force=True)``, the worker running the task is
  terminated (then killed), the task fails, the tasks sent behind it go back to
  the queue, and a new worker takes its place. A worker that dies on its own
  fails the task it started with ``WorkerCrashedError``, exit code or signal
  named; a task sent to it that it never started (its journal says which it
  started) goes back to the queue.
* Workers are never forks of this possibly threaded process. On Linux they are
  forked from a clean, single-threaded template process (``_template``) that
  the first process task starts, before this module is even imported
  (``_template_start``); elsewhere they are fresh interpreters (``subprocess``
  with the pipe passed down). Neither re-imports your ``__main__``: functions
  from it travel by value. A worker exits as soon as its pipe closes, and on
  Linux the kernel kills the template when this process ends (a thread of its
  own started it and outlives it), and each worker when its template ends
  (``_parent_death``), so none outlives the parent.
* A worker is set up before its first task (``sys.path``, BLAS thread limits,
  the pool's initializer) and says when it is ready; a task with a timeout
  has its clock started by the worker's "started" message.
* A worker is replaced for a reason (crashed, timed out, ``max_tasks_per_child``,
  ``max_worker_memory``, ...); :meth:`ProcessBackend._recycle_locked` retires one
  gracefully, and ``info()`` counts the restarts by reason.
* ``max_worker_memory`` is checked here, in the parent (``_worker_memory``), after
  a wake-up that brought results: once per batch of results, not per task,
  never while the option is off, and before the worker is sent more work.
"""

from __future__ import annotations

import _pickle  # the C modules under pickle and socket: their Python modules import re and enum (``_template``)
import _socket
import errno
import functools
import itertools
import logging
import os
import selectors
import sys
import threading
import time
import weakref
import traceback
import warnings
from collections import Counter, deque
from collections.abc import Callable, Sequence
from types import EllipsisType, FunctionType
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import _at_fork_in_child, _deadlines, _events, _process_context, _serialization
from .._cpu_share import pool_thread_limits
from .._cpus import usable_cpu_count, usable_cpus
from .._process_chunks import UNREPLACED, keep_results_before, template_died
from .._remote_errors import attach_remote_traceback, described
from .._states import FAILED, ON_WORKER, PENDING, RETRY_WAIT, RUNNING, SUCCEEDED, TIMED_OUT
from .._worker_memory import ResidentMemory
from ..errors import ShutdownError, TaskSerializationError, WorkerCrashedError
from . import _interpreter_settings as interpreter_settings
from ._channel import Channel
from ._crash_journal import JournalReader, create_journal
from ._delivery import Delivery
from ._descriptor_reserve import DescriptorsReserved, check_descriptors_left
from ._fd_numbers import standard_numbers_held
from ._inherited import inherits_standard_stream, interrupts_ignored
from ._interpreter_options import PACKAGE_FOLDER, interpreter_options, path_arguments, program_arguments, refused_start
from ._main_module import main_script
from ._output_relay import write_relayed
from ._queueing import QueueingBackend
from ._socketpair import blocking_socketpair, widen_send_buffer
from ._template import ForkedProcess, Template, take_template, template_available
from ._template_start import environment, stop_early
from ._wakeup import drain, wakeup_pipe
from ._worker_identity import name_for_worker, process_name

if TYPE_CHECKING:
    import subprocess  # imported where used: on Linux the template forks the workers
    from typing import TypeGuard

    from .._handle import AsyncHandle

__all__ = ["ProcessBackend"]

# This package's folder, then the parent's sys.path, one argument per entry, not in
# PYTHONPATH: the worker's environment is the program's (_interpreter_options). Both go
# first for the import of the package the program runs; then the parent's path becomes
# the worker's, exactly (a "" of the parent's then comes first).
_WORKER_MAIN = (
    "import sys, _socket; sys.path[:0] = sys.argv[5:]; "
    "from makeparallel._backends._channel import Channel; "
    "from makeparallel._backends._process_worker import main; "
    "sys.path[:] = sys.argv[6:]; "
    "main(Channel(_socket.socket(fileno=int(sys.argv[1]))), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == '1')"
)
_TERMINATE_GRACE = 1.0  # seconds between SIGTERM and SIGKILL
_EXIT_POLL = 0.1  # seconds between looks at whether a worker whose output is being delivered has ended
_FORCED_POLL = 0.01  # seconds between looks at a worker's crash journal while a forced cancel waits on it
# Seconds a worker told to stop has to exit once its tasks are done (its atexit handlers run meanwhile).
_EXIT_GRACE = 5.0
# Seconds a worker told to stop while it started, with no task left, may run its initializer before it
# is killed: health()'s SLOW_START. It would run no task, and held the place of the one recycled worker
# that may overlap its replacement (_maintain): two stuck in a row stalled a pool of one for good.
_LEAVING_START_GRACE = 60.0
_RETRY_REFUSED_AFTER = 1.0  # seconds before a look starts a worker again after the system refused one a fork or a thread
# A task this small is sent at once from submit(), never blocking its submitter; more where
# the worker's socket has the room for it (widen_send_buffer).
_DIRECT_BYTES = 32 * 1024
# What a busy worker's pipe may hold of tasks sent ahead: well under a socket's send buffer, so that
# sending them never blocks the loop, though the worker reads nothing (a C call holding its GIL).
_AHEAD_BYTES = 64 * 1024
#: Worker restarts are counted over this many seconds, for ``health()``.
RESTART_WINDOW = 10.0
_log = logging.getLogger("makeparallel")
# Each worker's name (multiprocessing's current_process().name in it: _worker_identity), numbered
# in this program as the thread pool's threads are, replacements and every pool's workers alike
# (in a worker, under its own name: name_for_worker).
_worker_numbers = itertools.count(1)
# What a worker takes of the parent's imports: its sys.path, and the modules it must import from the
# folders the parent loaded them from (_serialization.pins); and the parent's warning filters, which
# a task's warnings meet as they stand when it is submitted (_interpreter_settings).
_WorkersPath = tuple[list[str], dict[str, tuple[str, ...]], list[Any]]
_now = time.monotonic  # the clock of the restart window
_SHORT_TASK = 0.001  # tasks shorter than this, on average, get a deep window
# A worker that has returned nothing for this long, its task sent before, runs a long one
# whatever the average says: it is sent no task ahead, which would wait for that task's end.
_OVERDUE = 0.05
_FAILED_STARTS_ALLOWED = 3  # failed initializers in a row before the pool stops starting workers
# Each worker's BLAS and OpenMP libraries get usable CPUs // workers threads, unless the
# user set these (the variables loky sets): N workers x one thread per core oversubscribes.
THREAD_LIMIT_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
# What each library reads where its own variable is not set (OpenBLAS's ``blas_get_cpu_number``,
# MKL's and numexpr's documentation): a count the user set there is the library's, so the pool
# sets none of its own above it.
_FALLS_BACK_TO = {
    "OPENBLAS_NUM_THREADS": ("GOTO_NUM_THREADS", "OMP_NUM_THREADS"),
    "MKL_NUM_THREADS": ("OMP_NUM_THREADS",),
    "NUMEXPR_NUM_THREADS": ("OMP_NUM_THREADS",),
}


# Types, not the strings this module's annotations are: typing.NamedTuple compiles
# each string into a ForwardRef, about a millisecond of a first task.
WorkerSetup = NamedTuple("WorkerSetup", [("name", str), ("initializer", bytes | None), ("initargs", bytes)])
WorkerSetup.__doc__ = "What each new worker runs before its first task: the pool's initializer, pickled, and its name."


NO_SETUP = WorkerSetup("", None, b"")

# What a running map chunk streamed (``ProcessBackend._partials``): the results read, the
# error of a slice that could not be, how many results such slices held (None: unknown),
# and each such slice as it came, with the number of results read before it.
_Streamed = tuple[list[Any], Exception | None, int | None, list[tuple[int, bytes, list[Any]]]]


class _Worker:
    """The parent's view of one worker process."""

    __slots__ = (
        "ahead", "cancels_unsent", "configured_at", "conn", "cpu_share", "decoders", "delivering", "delivery",
        "direct_bytes", "exit_by", "exited",
        "forced", "held", "init_error", "initializer", "journal", "kill_at", "killing", "leaving", "memory_probe",
        "output_failed", "outstanding", "path", "process", "ready", "refused", "retiring", "retried", "returned_at",
        "send_lock", "sent", "start_round", "started_at", "stop_for", "stop_reason", "stop_task", "thread_limits", "too_many_threads",
        "undelivered", "waiting", "writing",
    )

    def __init__(
        self,
        process: subprocess.Popen[bytes] | ForkedProcess,
        conn: Channel,
        direct_bytes: int,
        journal: JournalReader,
        path: _WorkersPath,
        configured_at: float,
        start_round: int,
        thread_limits: dict[str, str],
        cpu_share: int,
    ) -> None:
        self.process = process
        self.thread_limits = thread_limits  # the BLAS and OpenMP thread counts it started with (thread_limits)
        self.cpu_share = cpu_share  # its usable CPUs, sent in its set-up message (cpu_share)
        # More threads or CPUs than the pool's size gives now: replaced once idle.
        self.too_many_threads = False
        self.stop_task: AsyncHandle[Any] | None = None  # a task of a stopped map or batch to kill it for, if it still runs it
        # The task it is killed for (a timeout, a forced cancel, a stopped map), and its
        # stop_reason before: a kill that finds that task ended is called off (_spare_locked).
        # None: killed whatever it runs.
        self.stop_for: tuple[AsyncHandle[Any], str] | None = None
        # The tasks whose attempt here timed out and was retried (_schedule_retry_locked): what
        # it still sends of them (result, crash, progress) is that attempt's, never the retry's.
        self.retried: set[int] = set()
        # Tasks sent ahead that a forced cancel found not started, and sent a plain cancel:
        # killed for if they start before the worker reads it (_kill_forced).
        self.forced: list[AsyncHandle[Any]] = []
        self.configured_at = configured_at  # when the pool was last configured as it started
        self.conn = conn
        self.journal = journal  # what a map chunk finished, readable after a crash
        # Held while a message is sent: by the loop thread, or by a submitting
        # thread that sends a task straight to this idle worker.
        self.send_lock = threading.Lock()
        self.direct_bytes = direct_bytes  # the largest task such a thread sends it: a send that fits its socket
        self.outstanding: deque[AsyncHandle[Any]] = deque()  # sent, in order; [0] runs
        self.returned_at = 0.0  # when it last sent results (time.perf_counter)
        self.writing = False  # the loop's selector watches its pipe for room: messages wait to go (_watch_writes)
        self.cancels_unsent = 0  # cancels among what waits to go, counted in its journal once gone (_flush)
        # Bytes of tasks sent behind a running one since it last had none waiting: at
        # least what its pipe holds unread (_AHEAD_BYTES).
        self.ahead = 0
        # Its first tasks, given to it before it was ready, and the sys.path it had before them:
        # sent once it is (_send_held), unless an idle worker takes them first (_hand_over_held).
        self.held: tuple[list[AsyncHandle[Any]], _WorkersPath] | None = None
        self.start_round = start_round  # the pool's count of start-up deaths counted, as it started (_died_unready_locked)
        self.started_at = _now()  # how long it has been starting, while not ready (info)
        self.killing = False
        self.retiring = False  # stopped because the pool shrank: not a restart
        self.kill_at: float | None = None
        self.exit_by: float | None = None  # told to stop, its tasks done: when it is ended if still there
        self.stop_reason = "crashed"  # why it was replaced, if it was: counted in info()
        self.leaving = False  # recycled: finishes the tasks it has, takes no more
        self.ready = False  # set up, initializer run
        self.initializer = ""  # the name of the pool's initializer it was set up with, if any
        self.init_error: BaseException | None = None
        self.refused: OSError | None = None  # why the system refused it what it needed to start (a thread)
        self.sent = 0  # tasks sent to it, for max_tasks_per_child
        self.path = path  # the parent's sys.path (and pins, filters) it has, as of the tasks sent to it
        self.memory_probe: ResidentMemory | None = None  # made once, for max_worker_memory
        self.decoders: dict[int, Any] = {}  # its bytes output, decoded for a stream with no buffer (write_relayed)
        self.output_failed: set[int] = set()  # the streams (0, 1) whose failure it was told of
        # Its output and log records read and not yet handed to its Delivery; once handed,
        # delivering until they are delivered, and the message read after them waiting.
        self.undelivered: list[Callable[[], None]] = []
        # Its own thread for them, started on its first (_delivery): one worker's blocked stream
        # or slow handler held the others' lines and records, where on threads it holds only
        # the threads that write to that stream or log to that handler.
        self.delivery: Delivery | None = None
        self.delivering = False
        self.waiting: Any = None  # a message, or _ENDED: its pipe's end of file
        self.exited = False  # its process ended while its output was delivered: a replacement runs its tasks


def _runs(worker: _Worker, handle: AsyncHandle[Any]) -> bool:
    """Whether ``worker`` runs ``handle`` now, or starts it next: a forced cancel or a timeout kills it then.

    The task its crash journal says it started; or the first of its tasks,
    while it has started none of them. Not the first alone: a result read
    behind output still being written waits (``_deliver``), and the tasks sent
    behind it run meanwhile. A forced cancel of the task that had ended
    killed the one after it, which then ran twice, and one of the task that
    ran did not stop it.
    """
    started = worker.journal.started()
    if started == handle._id:
        return True
    return worker.outstanding[0] is handle and all(other._id != started for other in worker.outstanding)


def _after_failed_start(gave_up: bool, unreplaced: bool = False) -> str:
    """What the pool does after a failed start, for the error that reports it.

    ``unreplaced``: the pool is shutting down with no task waiting for a
    worker, so it starts none (:data:`UNREPLACED`), as for a worker that dies then.
    """
    if gave_up:
        return (
            f"after {_FAILED_STARTS_ALLOWED} failed starts in a row the pool starts no more workers and "
            "fails new tasks at once, until configure_process_pool() is called again"
        )
    return UNREPLACED if unreplaced else "the pool will start a new worker"


def describe_exit(code: int | None) -> str:
    """``"exit code 3"`` or ``"signal SIGKILL(-9)"``, as loky names them."""
    if code is None:
        return "an unknown exit"
    if code < 0:
        import signal  # its enum of names: only for a worker that died by one

        try:
            return f"signal {signal.Signals(-code).name}({code})"
        except ValueError:
            return f"signal {-code}({code})"
    return f"exit code {code}"


class ProcessBackend(QueueingBackend):
    """A pool of worker processes fed by one loop thread."""

    name = "process"
    stop_hint = "its worker process was stopped, and a new one took its place"

    def __init__(self, num_workers: int | None = None) -> None:
        if os.name != "posix":  # pragma: no cover - the test machines are POSIX
            raise RuntimeError(
                "the process backend needs a POSIX system (Linux, macOS) for now; "
                "use backend='thread' here"
            )
        super().__init__()
        self._num_workers = usable_cpu_count() if num_workers is None else num_workers
        self._workers: list[_Worker] = []
        self._surplus: set[_Worker] = set()  # busy workers above num_workers: no new task, ended once idle
        self._holding = False  # a worker still starting may hold tasks: each pass looks (_hand_over_held)
        self._stale: set[_Worker] = set()  # busy as the pool last shrank, and not idle since
        self._control: deque[tuple[_Worker, tuple[Any, ...]]] = deque()  # sent by the loop
        self._wake_r, self._wake_w = wakeup_pipe()
        # Closed when the backend is collected (an Executor's, once shut down), or in a forked
        # child; not at exit, when the loop may still use it to stop the workers.
        self._close_wake_pipe = weakref.finalize(self, _close_all, os.close, self._wake_r, self._wake_w)
        self._close_wake_pipe.atexit = False
        self._woken = False  # a wake-up byte is written and the loop has not yet looked
        self._loop: threading.Thread | None = None
        self._delivered: deque[_Worker] = deque()  # whose output was delivered, for the loop to read on
        self._unread = 0  # workers the loop reads no more of until their output is delivered (_deliver)
        self._template: Template | None = None  # forks the workers (Linux); the loop thread owns it
        self._task_coming = False  # a first task is being pickled: start the workers meanwhile
        self._terminating = False
        self._restarts: dict[str, int] = {}  # by reason
        self._setup = NO_SETUP
        self._max_tasks_per_child: int | None = None
        self._max_worker_memory: int | None = None  # bytes of RSS
        self._memory_warned = False  # a fresh worker was over max_worker_memory: said once
        self._warm = False  # prestart: keep the pool full even with nothing queued
        # A worker left or is leaving: its replacement is forked after the pool's first results (_fork).
        self._replacing = False
        self._failed_starts = 0  # workers that failed to start, in a row: an initializer raised, one died, the system refused
        # Counted deaths of starting workers so far: a worker that started before the last one counted
        # died with it (one signal to the process group), and its death is not another start in the row.
        self._start_round = 0
        # When configure() was last called (time.perf_counter, the tasks' submission clock), which
        # each worker records as it starts.
        self._configured_at = 0.0
        # When the system last refused a worker a fork or a thread, while workers were there.
        self._start_refused_at: float | None = None
        self._short_of_workers: str | None = None  # why, while the workers there run the tasks: for health()
        self._left_to_end: list[subprocess.Popen[bytes] | ForkedProcess] = []  # workers not ours to stop, to reap
        # Workers taken out of the pool whose death _worker_died has yet to count: still live in info().
        self._dying = 0
        self._broken: Callable[[], BaseException] | None = None  # makes the error new tasks fail with
        # When a pool that gave up because the system refused its workers tries again (_start_refused_locked).
        self._refused_until: float | None = None
        # What workers get: sys.path, and the folders of the modules loaded through a relative
        # entry ('') of it, and of namespace packages (_serialization.pins), as of the last
        # submission. Replaced, never changed: each task keeps the one it was submitted under.
        self._path: _WorkersPath = (list(sys.path), _serialization.pins, interpreter_settings.warning_filters())
        self._filters_seen = _filters_now()  # what the last look found
        # Results a running map chunk streamed so far, the error of a slice that could
        # not be unpickled here, and how many results such slices held (None: unknown).
        self._partials: dict[int, _Streamed] = {}
        _alive.add(self)
        self._recent_restarts: deque[tuple[float, str]] = deque()  # when and why, within RESTART_WINDOW
        # The thread limits and CPU share of the pool's size as last configured; None: never resized.
        self._thread_limits: dict[str, str] | None = None
        self._cpu_share = 0
        self._loop_deaths = 0  # loop threads that died of an error in the pool itself
        self._paused = False  # memory is short: one task runs at a time
        # Tasks sent to a worker ahead of time: one (so priorities hold) until
        # tasks prove short, then enough that workers never wait for a round trip.
        self._mean_seconds = _SHORT_TASK
        self._window = 1

    # -- configuration and state -------------------------------------------------------

    def settings(self) -> tuple[int, WorkerSetup, int | None, int | None]:
        """The size, the workers' set-up (initializer), ``max_tasks_per_child`` and ``max_worker_memory``."""
        with self._lock:
            return self._num_workers, self._setup, self._max_tasks_per_child, self._max_worker_memory

    def restore(self, settings: tuple[int | None, WorkerSetup, int | None, int | None]) -> None:
        """Take :meth:`settings`' configuration; a size of ``None`` keeps this pool's (its process's cores)."""
        num_workers, setup, max_tasks_per_child, max_worker_memory = settings
        self.configure(num_workers, setup, max_tasks_per_child, False, max_worker_memory)

    def configure(
        self,
        num_workers: int | None,
        setup: WorkerSetup | None = None,
        max_tasks_per_child: int | None | EllipsisType = ...,
        prestart: bool = False,
        max_worker_memory: int | None | EllipsisType = ...,
    ) -> None:
        """Set the pool's size and worker set-up; a pool that stopped starting workers starts again.

        A new ``setup`` replaces the running workers as they become idle, so
        every task from now on runs after the new initializer. A larger
        ``num_workers`` marks the workers started with more BLAS and OpenMP
        threads, or a larger share of the CPUs, than each now gets
        (:meth:`_replace_if_too_many_threads_locked`).
        """
        limits = None if num_workers is None else thread_limits(num_workers)
        share = 0 if num_workers is None else cpu_share(num_workers)
        with self._lock:
            self._configured_at = time.perf_counter()
            self._failed_starts = 0
            self._broken = None
            self._refused_until = None
            self._short_of_workers = None
            self._start_refused_at = None  # a start it put off was the old configuration's
            if num_workers is not None:
                if num_workers < self._num_workers:  # what runs now runs beside the new size's tasks
                    self._stale = {w for w in self._workers if w.outstanding}
                self._num_workers = num_workers  # the loop's next look starts workers, or ends them:
                self._shed_surplus_locked()  # marked now, so that info() says so at once
                self._thread_limits, self._cpu_share = limits, share
                for worker in list(self._workers):
                    worker.too_many_threads = _more_threads(worker, limits, share)  # type: ignore[arg-type]
                    self._replace_if_too_many_threads_locked(worker)
            if setup is not None and setup != self._setup:
                self._setup = setup
                self._take_path_locked()  # pickling the initializer may have pinned its module
                for worker in self._workers:
                    if not worker.retiring:
                        self._recycle_locked(worker, "")
            if max_tasks_per_child is not ...:
                self._max_tasks_per_child = max_tasks_per_child
                # A worker is recycled as its last task is sent: one that ran its new
                # count already would take no task, and none would replace it.
                for worker in self._workers:
                    self._recycle_if_spent_locked(worker)
            if max_worker_memory is not ...:
                self._max_worker_memory = max_worker_memory
                self._memory_warned = False
            if prestart:
                self._warm = True
        if prestart:
            self._start_loop()
        self._wake()

    def timeout_hint(self, is_async: bool) -> str:
        """How a timed-out task of this pool is stopped, for its error: with its worker, replaced unless the pool is ending.

        Closed (a shutdown waits for the tasks) with no task waiting for a
        worker, the pool starts none for the one it stops, as for one that
        died (:meth:`_worker_died`); the error said "a new one took its place".
        The same check as there (:meth:`_starts_none_locked`), under the pool's
        lock, which the handle holds as it asks (``AsyncHandle._expire``); read
        without it where the task's circuit breaker is told first.

        Args:
            is_async: whether the task's function is async; a process task's
                coroutine ends with its worker all the same.
        """
        if self._starts_none_locked():
            return f"its worker process was stopped; {UNREPLACED}"
        return self.stop_hint

    def worker_count(self) -> int:
        return self._num_workers

    def info(self) -> dict[str, Any]:
        with self._lock:
            starting = [w for w in self._workers if not (w.ready or w.exited or w.killing)]
            longest = min(starting, key=lambda w: w.started_at, default=None)
            now = _now()
            return {
                "backend": self.name,
                "num_workers": self._num_workers,
                "live_workers": sum(1 for w in self._workers if not w.exited) + self._dying,
                "ready_workers": sum(
                    1 for w in self._workers if w.ready and not (w.leaving or w.killing or w in self._surplus)
                ),
                # The tasks given to a worker still starting are held here, not begun: it is not busy.
                "busy_workers": sum(1 for w in self._workers if w.ready and w.outstanding),
                "starting_workers": len(starting),
                # How long the one starting longest has been (its initializer may never return); None: none is.
                "longest_start_s": now - longest.started_at if longest is not None else None,
                # The initializer that one runs: its own, which a new set-up does not change (it is left to
                # finish it). The pool's, named, was a new one its replacements had run in no time.
                "longest_start_initializer": (longest.initializer or None) if longest is not None else None,
                "held_tasks": sum(len(w.held[0]) for w in starting if w.held is not None),
                # Those held too: not begun, as their handles say.
                "queued_tasks": self._queued + len(self._held_for_workers_locked()),
                "active_tasks": self._active,
                "worker_restarts": sum(self._restarts.values()),
                "worker_restart_reasons": dict(self._restarts),
                "restarts_in_window": self._count_recent_restarts_locked(),
                "restart_reasons_in_window": dict(Counter(reason for _, reason in self._recent_restarts)),
                "restart_window_s": RESTART_WINDOW,
                "loop_deaths": self._loop_deaths,
                "paused": self._paused,
                # Forked yet, and not ended (its pid may be another process's by now).
                "worker_pids": [w.process.pid for w in self._workers if w.process.pid is not None and not w.exited],
                "max_tasks_per_child": self._max_tasks_per_child,
                "max_worker_memory": self._max_worker_memory,
                "initializer": self._setup.name or None,
                "thread_limits": thread_limits(self._num_workers),
                "closed": self._closed,
                # Why new tasks fail at once, since the pool gave up starting workers; else None.
                "refusing_tasks": None if self._broken is None else str(self._broken()),
                "refused_starts": self._short_of_workers,
            }

    def _count_recent_restarts_locked(self) -> int:
        recent = self._recent_restarts
        horizon = _now() - RESTART_WINDOW
        while recent and recent[0][0] < horizon:
            recent.popleft()
        return len(recent)

    # -- submission --------------------------------------------------------------------

    def submit(self, handle: AsyncHandle[Any]) -> None:
        if self._loop is None and not self._closed:  # cold: workers start while the task is pickled
            with self._lock:
                self._task_coming = True
            self._start_loop()
        self._prepare(handle)
        idle = self._idle_worker_locked(handle)  # a guess, without the lock: checked again under it
        if idle is not None and not idle.send_lock.locked() and self._send_directly(idle, handle):
            return
        with self._lock:
            self._refuse_if_closed_locked()
            self._accept_locked(handle)
            loop = self._loop
        if loop is None:
            self._start_loop()
        else:
            self._wake()

    def _new_loop_locked(self) -> threading.Thread:
        # Where there is no template, the loop thread starts every worker and
        # outlives them: Linux's parent-death signal fires when the thread that
        # started a worker ends.
        return threading.Thread(target=self._run_loop_or_recover, name="makeparallel-process-loop", daemon=True)

    def _start_loop(self) -> None:
        """Start the loop thread, unless one runs.

        Started under the lock, and forgotten if ``start()`` raised before it
        began (Ctrl-C, which CPython raises as a C call returns): else the pool
        would wait for good on a loop that never runs. A thread forgotten so
        that begins all the same ends at once (:meth:`_run_loop_or_recover`).
        """
        with self._lock:
            if self._loop is not None:
                return
            self._loop = loop = self._new_loop_locked()
            try:
                loop.start()
            except BaseException:
                if not loop.is_alive():
                    self._loop = None
                raise

    def _accept_refused(self, handle: AsyncHandle[Any], error: BaseException) -> None:
        # Pickled now, as submit() pickles a task: its retry is sent with the payload it keeps.
        self._prepare(handle)
        super()._accept_refused(handle, error)

    def _resume(self, handle: AsyncHandle[Any]) -> None:
        if self._queue_retry(handle, self._enqueue_locked):  # its payload was kept for this
            self._start_loop()
            self._wake()

    def set_paused(self, paused: bool) -> None:
        with self._lock:
            self._paused = paused
        if self._loop is not None:
            self._wake()

    def close(self, cancel_pending: bool) -> None:
        with self._lock:
            self._closed = True
            pending = []
            if cancel_pending:  # those held for a starting worker have not started either
                for worker in self._workers:
                    if not (worker.ready or worker.killing):
                        self._requeue_held_locked(worker)
                pending = self._unstarted_locked()
        self._cancel_together(pending)

    def reopen(self) -> None:
        with self._lock:
            self._closed = False
            self._terminating = False
            self._replacing = False  # its first workers start as a new pool's: none replaces one

    def locks_shutdown_takes(self) -> list[Any]:
        """The pool's lock, and each worker's send lock: a shutdown closes their pipes (``_close``), after a send."""
        return [self._lock, *(worker.send_lock for worker in list(self._workers))]

    def begin_terminate(self) -> None:
        """Have the loop thread stop every worker, without waiting; a task still running fails with ``ShutdownError``.

        The loop thread owns the pipes, so it does the stopping.
        """
        with self._lock:
            self._terminating = True
            loop = self._loop
        if loop is not None:
            self._wake()

    def terminate(self) -> None:
        """Stop every worker now (:meth:`begin_terminate`), and wait for the loop thread to have done it."""
        self.begin_terminate()
        with self._lock:
            loop = self._loop
        if loop is not None and loop is not threading.current_thread():  # a callback's shutdown(): it stops after
            loop.join(timeout=4 * _TERMINATE_GRACE + 1)

    # -- hooks the handle calls -----------------------------------------------------

    def _steal(self, handle: AsyncHandle[Any]) -> bool:
        return False  # a process task never runs in this process

    def _prepare(self, handle: AsyncHandle[Any]) -> None:
        function, data, buffers = _serialize_call(handle)
        filters = warnings.filters
        seen, length, first = self._filters_seen
        if filters is not seen or len(filters) != length or (filters and filters[0] is not first):
            self._follow_warning_filters(filters)  # changed, or catch_warnings() entered or left
        path, pinned, _ = self._path
        asked = _serialization.pins_asked  # -1: sys.path has no relative entry, nothing is pinned
        if (
            sys.path != path
            or _serialization.pins is not pinned  # pinned anew as the call was pickled
            or (asked != -1 and asked != _serialization.modules_now())  # modules imported since
        ):
            pins = _serialization.refresh_pins()
            if sys.path != path or pins is not pinned:  # what the caller can import, its workers can
                with self._lock:
                    self._take_path_locked(pins)
        # The task runs under the sys.path and filters of its submission, whatever changes while it waits.
        handle._payload = (function, data, buffers, self._path)

    def _follow_warning_filters(self, filters: Any) -> None:
        """Have workers take the caller's warning filters before their next task, if they changed."""
        self._filters_seen = _filters_now()
        plain = interpreter_settings.warning_filters()
        with self._lock:
            path, pins, taken = self._path
            if plain != taken:
                self._path = (path, pins, plain)

    def _take_path_locked(self, pins: dict[str, tuple[str, ...]] | None = None) -> None:
        """Have workers take the caller's ``sys.path`` and ``pins`` before their next task, if they changed."""
        path, pinned, filters = self._path
        moved = sys.path != path
        if pins is None:
            pins = _serialization.refresh_pins()
        if moved or pins is not pinned:
            self._path = (list(sys.path) if moved else path, pins, filters)

    def _work_arrived(self) -> None:
        self._start_loop()
        self._wake()

    def _holds_locked(self, handle: AsyncHandle[Any]) -> bool:
        return any(worker.held is not None and handle in worker.held[0] for worker in self._workers)

    def _held_for_workers_locked(self) -> list[AsyncHandle[Any]]:
        """The tasks given to workers still starting, held here until they are ready: not begun.

        Claimed from the queue (``RUNNING``), they are no longer counted in it,
        but their handles say pending (``AsyncHandle._seen_state``), and
        ``health()`` counts them as waiting: the queued counts include them, so
        the gauges read what the handles say. One cancelled while held is not.
        """
        return [h for w in self._workers if w.held is not None for h in w.held[0] if h._state == RUNNING]

    def _not_begun_locked(self) -> list[AsyncHandle[Any]]:
        """With those held for workers still starting: an ``mp.Executor``'s carrier among them is left out too (``unseen``)."""
        return super()._not_begun_locked() + self._held_for_workers_locked()

    def _abandoned(self, handle: AsyncHandle[Any], force: bool = False) -> None:
        # A task's own timeout kills the worker running it at once, as a forced cancel does.
        self._abandon(handle, force or handle._state == TIMED_OUT or handle._timing_out(), force)

    def _stops_before_timing_out_locked(self, handle: AsyncHandle[Any]) -> float | None:
        """The grace of the kill, where a worker runs ``handle``: it times out once that worker's output is written.

        What the task printed up to its timeout comes as the worker handles
        the ``SIGTERM`` (its handler flushes the partial line), before its
        pipe's end of file (or a result it sent as it was stopped): the
        handle is timed out there (``_worker_died``, ``_take``), so that a
        ``redirect_stdout`` around ``get()`` holds it as for a task that
        returned. A worker deaf to the signal is killed at the end of the
        grace, and the handle's deadline times it out then in any case.
        """
        worker = self._running_on_locked(handle)
        if worker is None or worker.exited or not _runs(worker, handle):
            return None
        if worker.held is not None and handle in worker.held[0]:
            return None
        return _TERMINATE_GRACE

    def _abandoned_all(self, handles: list[AsyncHandle[Any]]) -> None:
        """Running tasks ended together (``cancel_all``, ``time_out_all``): each asked to stop, none killed here.

        Not even a chunk timed out with its map: the map has the workers still
        running its chunks killed itself (``_stop_abandoned``), as its own stop,
        counted ``"stopped"`` and no incident for ``health()``, where a task's
        own timeout is a ``"timed out"`` restart.
        """
        for handle in handles:
            self._abandon(handle, False, False)

    def _abandon(self, handle: AsyncHandle[Any], kill: bool, force: bool) -> None:
        """Stop ``handle``, which ended as it ran or waited on a worker.

        ``kill``: kill the worker if it runs the task (or starts it next); else
        the worker is asked to stop it at its next ``check_cancelled()``, or
        never to start it, and ``force`` kills it if it starts the task first.
        """
        with self._lock:
            worker = self._running_on_locked(handle)
            if worker is None:
                return
            self._stop_on_locked(worker, handle, kill, force)
        self._wake()

    def _stop_on_locked(self, worker: _Worker, handle: AsyncHandle[Any], kill: bool, force: bool) -> None:
        """Stop the attempt of ``handle`` that ``worker`` holds, as :meth:`_abandon` says; the loop is to be woken."""
        if worker.held is not None and handle in worker.held[0]:  # never sent: it leaves them now
            self._drop_held_locked(worker, handle)
            return
        if worker.exited:  # ended already: nothing to stop (it is read to its end as it is)
            return
        if kill and _runs(worker, handle):
            # (A timeout a retry follows leaves the handle waiting for it, not timed out.)
            timed_out = handle._state in (TIMED_OUT, RETRY_WAIT) or handle._timing_out()
            self._kill_for_locked(worker, handle, "timed out" if timed_out else "cancelled")
        else:  # ask it to stop at its next check_cancelled(), or never to start
            self._control.append((worker, ("cancel", handle._id, handle._value)))
            if force:  # it may start before the worker reads that
                worker.forced.append(handle)

    def _running_on_locked(self, handle: AsyncHandle[Any]) -> _Worker | None:
        """The worker given the attempt of ``handle`` under way, if any: not one still holding an attempt retried since."""
        return next((w for w in self._workers if handle in w.outstanding and handle._id not in w.retried), None)

    def _schedule_retry_locked(self, handle: AsyncHandle[Any], due: float) -> None:
        """Mark the attempt retried as over where a worker still holds it, and stop it there as a timeout does.

        Only an attempt that timed out is still held as its task is retried (a
        failure is retried as its worker's message is read). Whatever that
        worker still sends of the task (its late result, its crash, its
        progress) is that attempt's, and dropped (``retried``); asked which
        worker runs the task (a forced cancel, the retry's own timeout, its
        stop with a group: :meth:`_stop_abandoned`), the pool looks past it.
        Before, a late outcome was told apart only while its worker was being
        killed or had its kill called off, and only once the retry ran on
        another worker: an attempt whose worker had ended on its own as its
        output was written (recycled, or crashed), nothing left to kill,
        settled the retry with its result or failed it with its crash, and a
        forced cancel, the retry's timeout or its stop with a group found that
        worker first and killed none.
        """
        for worker in self._workers:
            if handle in worker.outstanding and handle._id not in worker.retried:
                worker.retried.add(handle._id)
                self._stop_on_locked(worker, handle, True, True)
                self._wake()
        super()._schedule_retry_locked(handle, due)

    def _late_attempt_ended_locked(self, handle: AsyncHandle[Any]) -> None:
        """An attempt of ``handle`` retried while a worker held it ended there: its result was read, or its worker ended.

        Its code is the task's code under way until a later attempt is queued:
        while the task waits to retry, or once it was cancelled in that wait, its
        end wakes ``cancel_with_timeout``. (Dropped with the rest of what that
        worker sent, it left the wait to run out, saying the code still ran.) Not
        once another attempt is queued, or still held by a worker: that one's
        code is what is waited for.
        """
        if handle._state != PENDING and not any(handle in w.outstanding for w in self._workers):
            handle._code_returned()

    def _kill_for_locked(self, worker: _Worker, handle: AsyncHandle[Any], reason: str) -> None:
        """Kill ``worker`` for ``handle``, which it runs or starts next; ``reason`` is counted as its restart's.

        Already being killed for a task that has ended since (it was spared,
        or is about to be), it is killed for this one now: folded into that
        kill, a forced cancel of the task after it was called off with it.
        """
        if not worker.killing:
            worker.stop_for = (handle, worker.stop_reason)
        elif worker.stop_for is not None and worker.stop_for[0] is not handle:
            worker.stop_for = (handle, worker.stop_for[1])
            worker.kill_at = None  # signalled again, for this one
        worker.killing = True
        worker.stop_reason = reason

    def _stop_abandoned(self, handle: AsyncHandle[Any]) -> None:
        """Kill the worker still running ``handle``, a task of a map or a batch stopped as a whole.

        Counted as ``"stopped"`` in ``worker_restart_reasons``, and no incident
        for ``health()``: a program that rejects a batch now and then (an item's
        error) had its pool reported in a restart storm of crashes or timeouts.
        """
        with self._lock:
            worker = self._running_on_locked(handle)  # not one still holding an attempt retried since
            if worker is None or worker.exited or not _runs(worker, handle):
                return
            if worker.held is not None and handle in worker.held[0]:
                return
            if worker.killing and (worker.stop_for is None or worker.stop_for[0] is handle):
                return
            worker.stop_task = handle  # the loop marks it for killing if it still runs the task (_kill_marked)
        self._wake()

    # -- the loop ----------------------------------------------------------------------

    def _wake(self) -> None:
        """Make the loop look again at what changed; one write per look, however many callers.

        Every caller changes the state first and wakes after; the loop clears
        ``_woken`` before it looks, so a caller that finds it set is seen by that
        look. A write per submission instead made each one hand the GIL to the
        loop thread and wait to get it back.
        """
        if self._woken:
            return
        self._woken = True
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def _run_loop_or_recover(self) -> None:
        """Run the loop; if it ever raises, fail what it owned so that nothing waits forever.

        Callbacks, listeners and log handlers cannot raise into the loop, so this
        is the net for a fault of the pool itself. Its workers are stopped, and
        every task it held, running or queued, fails with ``WorkerCrashedError``;
        the next submission starts a new loop with new workers. ``health()`` reports the
        process as not live from then on: tasks were lost to a bug.
        """
        with self._lock:
            if self._loop is not threading.current_thread():
                return  # forgotten: its start() was interrupted (see _start_loop)
        try:
            self._run_loop()
        except BaseException as error:
            try:
                _log.critical(
                    "the makeparallel process pool's loop thread died; its tasks fail with "
                    "WorkerCrashedError. Restart the process (health() reports it as not live)",
                    exc_info=True,
                )
            except BaseException:  # a handler that fails, or logging's last resort to a closed stderr
                pass  # the recovery must run: without it, every waiter waits for good
            self._recover_from_loop_death(error)

    def _refuse_queued(self, refusal: OSError) -> None:
        """The system refused the loop what it needs to start (a descriptor): the queued tasks fail, the next one tries again.

        A want of the system's, not a fault of the pool: counted as the loop's
        death, it had ``health()`` report the process not live for good, once
        the descriptors were back and tasks ran again.
        """
        with self._lock:  # together: a task submitted from now on starts a loop again
            queued = self._take_queued_locked()
            self._loop = None
        for handle in queued:
            handle._finish(
                FAILED,
                WorkerCrashedError(
                    f"task {handle._id} ({handle.name}) was not run: the system refused the process pool "
                    f"what it needs ({type(refusal).__name__}: {refusal}); the next task tries again"
                ),
            )

    def _recover_from_loop_death(self, cause: BaseException) -> None:
        # Everything the dead loop owned is taken out under the lock first, so that
        # a task submitted from now on starts a new loop with new workers.
        with self._lock:
            self._loop_deaths += 1
            workers, self._workers = self._workers, []
            self._dying = 0  # a death the loop was counting when it died is counted no more
            self._unread = 0  # its workers' output, delivered or not, is read no more
            for worker in workers:
                worker.delivering = False
                if worker.delivery is not None:
                    worker.delivery.stop()
            owned = [handle for worker in workers for handle in worker.outstanding]
            while (handle := self._next_locked()) is not None:
                owned.append(handle)
            self._loop = None
        try:
            for worker in workers:
                _close(worker)
            left_alone = _stop_together([worker.process for worker in workers], every_worker=True)
            for worker in workers:
                if worker.process not in left_alone:
                    worker.process.wait()  # exited or killed: reaped at once
                worker.journal.close()
            self._close_template()
        finally:  # what killed the loop may fail this too (an import the program may no longer read)
            for handle in owned:
                handle._finish(
                    FAILED,
                    WorkerCrashedError(
                        f"task {handle._id} ({handle.name}) was in the process pool when its loop "
                        f"thread died ({type(cause).__name__}: {cause}); its worker was stopped"
                    ),
                )

    def _run_loop(self) -> None:
        # One selector for the loop's life, changed only when the workers change:
        # building one per pass cost more than a no-op task's result.
        try:
            with standard_numbers_held():
                selector = selectors.DefaultSelector()
        except OSError as error:
            self._refuse_queued(error)
            return
        with selector:
            selector.register(self._wake_r, selectors.EVENT_READ)
            watched: list[_Worker] = []
            template: Template | None = None
            look = True
            while not look or self._maintain():
                # Stale sockets leave the selector before new ones join: a new socket
                # may have the number of one closed since.
                if template is not None and (template is not self._template or not template.alive):
                    _unwatch(selector, template)
                    template = None
                workers = self._workers
                if self._unread:  # not watched while their output is delivered
                    workers = [worker for worker in workers if not worker.delivering]
                if workers != watched:
                    _watch(selector, watched, workers)
                    watched = list(workers)
                _watch_writes(selector, watched)
                if template is None and self._template is not None and self._template.alive:
                    template = self._template
                    selector.register(template, selectors.EVENT_READ, template)
                events = selector.select(self._next_due_in())
                look = not events  # a kill is due, or a fork to try again
                for key, mask in events:
                    if mask & selectors.EVENT_WRITE:
                        _flush(key.data)
                        if not mask & selectors.EVENT_READ:
                            continue
                    if key.data is None:
                        drain(self._wake_r)
                        self._woken = False  # before _maintain looks: a later wake writes again
                        look = True
                        if self._delivered:
                            self._read_on_after_delivery()
                    elif isinstance(key.data, Template):
                        key.data.read()  # forks and exits reported
                        look = True
                    else:
                        self._receive_all(key.data)
                # Results alone, with nothing queued or to send, no worker gone, none above
                # the pool's size and none starting with tasks held for it (an idle worker
                # takes those), leave nothing to do: back to waiting at once, which
                # hands the GIL to the thread the results woke instead of making it wait for a pass.
                look = look or bool(self._queued or self._control or self._surplus or self._holding)
                look = look or self._workers != watched
        self._close_template()

    def _start_worker(self, path: _WorkersPath, configured_at: float) -> _Worker:
        """Start a worker: forked from the template on Linux, else a fresh interpreter.

        The worker gets its end of the pipe and its crash journal (``_crash_journal``).
        """
        parent_end, child_end = blocking_socketpair(_socket.SOCK_STREAM)
        # The parent's end only: the worker's carries its output, which waits while the program reads none.
        direct_bytes = widen_send_buffer(parent_end, _DIRECT_BYTES)
        journal_fd = create_journal()
        journal = None
        try:
            journal = JournalReader(journal_fd)
            limits, share = thread_limits(self._num_workers), cpu_share(self._num_workers)
            environ = _environment_for_workers(limits)
            forked = self._fork(child_end, journal_fd, environ) if template_available() and _enterable() else None
            process: subprocess.Popen[bytes] | ForkedProcess
            if forked is not None:
                process = forked
            else:
                process = _start_fresh_interpreter(child_end.fileno(), journal_fd, environ, path[0])
        except BaseException:
            parent_end.close()
            if journal is not None:
                journal.close()
            raise
        finally:
            child_end.close()
            os.close(journal_fd)  # each side's mapping keeps the file
        worker = _Worker(
            process, Channel(parent_end), direct_bytes, journal, path, configured_at, self._start_round, limits, share
        )
        if forked is not None:  # first, its environment; then its sys.path, before it imports anything
            _send(worker, forked.template.start_message(environ))
            _send(worker, ("path", _path_message(path)))
        elif path[1]:  # a fresh interpreter has sys.path on its command line
            _send(worker, ("path", _path_message(path)))
        return worker

    def _fork(self, child_end: _socket.socket, journal_fd: int, environ: dict[str, str]) -> ForkedProcess | None:
        """A worker forked from the template, to be given ``environ``, started first if need be; None if it cannot start.

        None also while an outdated template (this process changed what a fork
        of it could not take on, its user say: ``_inherited``) has workers:
        closing it would kill them, so new ones start as fresh interpreters
        until they are gone, and the next worker starts a new template. And
        None where the template just taken is outdated already (one a first
        task started early, before the program changed its locale, say): the
        next worker's start closes it.
        """
        template = self._template
        if template is not None and (not template.alive or template.outdated(environ)):
            if template.alive and template.has_children:
                return None
            template.close()  # it died (reap it), or forks for no one now
            template = self._template = None
        if template is None:
            try:
                template = self._template = take_template()
            except OSError:
                return None
            if template.outdated(environ):
                return None
        # Prestarted, its workers are ready for any task. Once a worker is replaced, the first
        # results are out: every later worker has what some tasks need from the fork, where the
        # template's own preload waits for it to be idle, which one replacing a worker per task
        # (max_tasks_per_child=1) never was, and each new worker imported cloudpickle again.
        # Known as the worker leaves, not once it is reaped (a restart counted): the replacement
        # of a worker that retires after its task is forked before that.
        if self._warm or self._replacing:
            template.preload()
        return template.fork(child_end, journal_fd)

    def _close_template_if_outdated(self, template: Template) -> None:
        """Close ``template`` once its last worker ended, if it is outdated (``_fork``).

        Not at the next worker's start: a template started as root forked as
        root, on request, for a program that has dropped its privileges since.
        """
        if template is not self._template or not template.alive or template.has_children:
            return
        if template.outdated(environment()):
            self._close_template()

    def _close_template(self) -> None:
        """Stop the template once the loop has stopped every worker."""
        template, self._template = self._template, None
        if template is not None:
            template.close()
        stop_early()  # started for this pool's first task, and not taken: it stopped before its first worker

    def _maintain(self) -> bool:
        """Start and stop workers, send control messages, dispatch; False to end the loop."""
        with self._lock:
            terminating = self._terminating
            workers = list(self._workers)
        if terminating:
            for worker in workers:
                if worker.delivering:  # its pipe is read once it ended: results wait there behind its output
                    _end_writing(worker)
                else:
                    _close(worker)  # end of file: a worker ends on its own
            left_alone = _stop_together([worker.process for worker in workers], every_worker=True)
            for worker in workers:
                if worker.delivering and worker.process not in left_alone:
                    self._read_what_is_left(worker)
                self._worker_died(worker, stoppable=worker.process not in left_alone)
            with self._lock:  # no worker is left to run what waits in the queue: it ends now
                # (Unless the pool was reopened meanwhile, by reset_shutdown() on another thread
                # as a callback's shutdown() returned: what waits now was submitted since.)
                left = self._take_queued_locked() if self._terminating else []
            for handle in left:
                handle._finish(FAILED, self._not_started_at_shutdown(handle))
        with self._lock:
            if self._terminating or (self._closed and self._active == 0 and not self._workers):
                self._loop = None
                return False
            if self._refused_until is not None and _now() >= self._refused_until:
                self._broken = self._refused_until = None  # the system may have what a worker needs again
                self._failed_starts = 0
            broken = self._broken
            refused = self._take_queued_locked() if broken is not None else []
            staying = sum(1 for w in self._workers if not w.leaving)
            # Workers recycled for a reason (max_tasks_per_child, max_worker_memory) finish
            # their tasks, then exit: one may overlap its replacement, the others' wait.
            # Else with max_tasks_per_child=1 each task sent started a worker: 31 at once
            # for 30 queued tasks. A new set-up replaces every worker at once.
            recycled = sum(1 for w in self._workers if w.leaving and not (w.retiring or w.exited))
            # Tasks held for a worker still starting wait for a worker too: with the pool one short
            # (its ready worker died, or was recycled) they waited out that worker's initializer.
            wanted = (self._queued or self._holding or self._warm or self._task_coming) and self._broken is None
            self._task_coming = False
            missing = self._num_workers - staying - max(0, recycled - 1) if wanted else 0
            if self._start_refused_at is not None:
                if _now() - self._start_refused_at < _RETRY_REFUSED_AFTER:
                    missing = 0  # the workers there take the tasks; the refusal's report itself woke this look
                else:
                    self._start_refused_at = None
            if missing > 0:  # sys.path may have changed since the last task: a prestart's initializer needs it
                self._take_path_locked()
            setup, path = self._setup, self._path
            configured_at = self._configured_at
        for handle in refused:
            handle._finish(FAILED, broken())  # type: ignore[misc]
        started = 0
        while started < missing:
            if self._workers:  # one more only if the program keeps descriptors of its own
                try:
                    check_descriptors_left()
                except DescriptorsReserved as reserved:  # no failed start: one is tried again as one leaves
                    with self._lock:
                        self._short_of_workers = f"{type(reserved).__name__}: {reserved}"
                    break
            try:
                worker = self._start_worker(path, configured_at)
            except OSError as error:  # the system refused: no process or descriptor left, a too large environment...
                with self._lock:
                    stop = self._start_refused_locked(error)
                    if self._broken is not None:
                        self._wake()  # the next look fails the queued tasks with its error
                if stop:
                    break
                continue
            started += 1
            worker.initializer = setup.name
            argv, settings = program_arguments(), interpreter_settings.current(path[2])
            identity = (name_for_worker(next(_worker_numbers)), process_name())
            setup_message = (
                setup.initializer, setup.initargs, argv, main_script(), interrupts_ignored(), settings, identity
            )
            _send(worker, ("setup", *setup_message, worker.cpu_share, worker.thread_limits))
            with self._lock:
                self._workers.append(worker)
                if setup is not self._setup:  # replaced as it started: it ran every later task with the old one
                    self._recycle_locked(worker, "")
                if self._thread_limits is not None:  # resized as it started: its limits may be the old size's
                    worker.too_many_threads = _more_threads(worker, self._thread_limits, self._cpu_share)
        if self._surplus or len(self._workers) > self._num_workers:  # (read unlocked: a later look sees a change)
            with self._lock:
                self._shed_surplus_locked()
        if self._unread:
            self._notice_ends_while_delivering()
        self._end_overdue_exits()
        self._kill_marked()
        if self._left_to_end:
            self._reap_left_to_end()
        later = []
        while self._control:
            worker, message = self._control.popleft()
            if message[0] == "stop" and worker.held is not None:  # after the tasks it holds, or it ends first
                later.append((worker, message))
                continue
            _send_control(worker, message)
        self._control.extend(later)
        workers = list(self._workers)
        if self._paused:  # memory is short: a task starts only when none runs
            if not any(w.outstanding for w in workers):
                for worker in workers:
                    if not worker.killing:
                        self._dispatch(worker, 1)
                        break
            return True
        self._hand_over_held(workers)
        for ready in (True, False):  # one task to every idle worker first, those ready before those starting
            for worker in workers:
                if not worker.outstanding and worker.ready is ready:
                    self._dispatch(worker, 1)
        for worker in workers:  # then fill windows, by a fair share of the queue
            self._dispatch(worker, min(self._window, self._queued // max(1, len(workers))))
        return True

    def _shed_surplus_locked(self) -> None:
        """Keep ``num_workers`` workers taking tasks: above it, idle ones end now, busy ones take no more, then end.

        Kept first: the ready workers busy with tasks sent since the pool
        shrank, then idle ready ones, then those still starting (those holding
        tasks first: an idle worker takes the tasks), then those still busy
        with tasks from before it (each kind oldest first). So after a shrink
        while all were busy, the first to finish takes the queued tasks, which
        never wait behind a long one, and keeps them; the others end as they
        finish. (Idle ones kept first, the workers passed the queue back and
        forth, and the pool never shrank while tasks kept coming; a starting
        worker kept over a ready one made the next task wait for its
        initializer.) Decided at every
        look, not once when the pool is configured: a worker still starting
        then counts too (it ended up above the size for good), and a pool
        grown back before its busy workers finished keeps them, where retiring
        them started new ones (six processes at work for a size of two).
        """
        taking = [w for w in self._workers if not (w.leaving or w.killing)]
        self._stale = {w for w in self._stale if w.outstanding}
        self._surplus = set()
        if len(taking) <= self._num_workers:
            return
        taking.sort(key=lambda w: 4 if w in self._stale else (0 if w.ready else 2) + (not w.outstanding))  # stable
        for worker in taking[self._num_workers :]:
            if worker.outstanding:
                self._surplus.add(worker)
            else:
                worker.killing = worker.retiring = True

    def _full_locked(self) -> bool:
        """Whether ``num_workers`` workers run tasks: an idle one takes none now.

        Only workers above the size can make it so: a recycled one finishing
        its last tasks while its replacement is ready (with
        ``max_tasks_per_child=1`` and one worker, two tasks ran at once). Not
        one replaced by a new initializer, whose replacements take the tasks
        at once (it may be stuck in the old one: counted, it held the queue for
        good), nor those running as the pool shrank
        (:meth:`_shed_surplus_locked`), whose tasks run beside the new size's:
        counted, they held the queue until all but the new size's number of
        them had ended; nor one still starting that holds tasks it gives back
        to an idle worker (:meth:`_hand_over_held`: counted, the replacement
        was never idle to take them, and they waited for the initializer),
        unless recycled already: its replacement takes no other task while it
        will run them, but takes them themselves (:meth:`_takes_held_locked`).
        """
        running, last_held = self._busy_counts_locked()
        return running + last_held >= self._num_workers

    def _busy_counts_locked(self) -> tuple[int, int]:
        """The workers that count as running tasks (:meth:`_full_locked`): those ready, and those recycled still starting."""
        stale, surplus = self._stale, self._surplus
        running = last_held = 0
        for w in self._workers:
            if not w.outstanding or w.killing or w.retiring or w.exited or w in surplus or w in stale:
                continue
            if w.ready:
                running += 1
            elif w.leaving:  # its first tasks, held for it, are its last
                last_held += 1
        return running, last_held

    def _takes_held_locked(self, worker: _Worker) -> bool:
        """Whether ``worker``, ready and idle, takes the tasks held for workers still starting.

        As :meth:`_declines_locked` has it, except that those held for a
        recycled worker (``max_tasks_per_child``), counted as running there,
        are no reason to decline them: it would have been the idle
        replacement of a worker stuck in its initializer, declining that
        worker's tasks for good.
        """
        if not worker.ready or worker.outstanding or worker.killing or worker.leaving or worker.held is not None:
            return False
        if worker in self._surplus:
            return False
        return len(self._workers) <= self._num_workers or self._busy_counts_locked()[0] < self._num_workers

    def _hand_over_held(self, workers: list[_Worker]) -> None:
        """Put the tasks held for workers still starting back in the queue while a ready worker is idle.

        A worker's start can take long (an initializer loading a model, a slow
        import): its first tasks waited for it while another worker idled,
        where ``multiprocessing.Pool``'s idle worker takes them from the
        shared queue. Held in the parent until it is ready, never in its
        pipe, they go back to the queue, where they take their turn by
        priority and order again, idle ready workers served first (taken
        back only once the queue was empty, a held task of high priority
        waited behind every later one). Those of a worker recycled already
        too (``max_tasks_per_child``, reached by the tasks held for it): they
        were to be its last, and it leaves with none, once set up (its
        replacement has started). Kept for it, they waited for an initializer
        that never returned for good, beside that idle replacement. Not those
        of a worker being killed (they go back as it dies).
        """
        with self._lock:
            starting = [w for w in workers if w.held is not None and not (w.ready or w.killing)]
            self._holding = bool(starting)
            if starting and any(self._takes_held_locked(w) for w in workers):
                taken = [handle for worker in starting for handle in self._take_back_held_locked(worker)]
                for handle in sorted(taken, key=lambda handle: handle._id, reverse=True):  # oldest in front
                    self._requeue_locked(handle)

    def _declines_locked(self, worker: _Worker) -> bool:
        """Whether ``worker`` takes no task now.

        Not one being killed, recycled, above the pool's size, or holding its
        first tasks (it takes no more until they are sent); nor an idle
        replacement while the worker it replaces runs its last tasks
        (:meth:`_full_locked`).
        """
        if worker.killing or worker.leaving or worker.held is not None or worker in self._surplus:
            return True
        return not worker.outstanding and len(self._workers) > self._num_workers and self._full_locked()

    def _dispatch(self, worker: _Worker, window: int) -> None:
        """Send ``worker`` tasks until it has ``window`` outstanding."""
        batch: list[AsyncHandle[Any]] = []
        with self._lock:
            if self._declines_locked(worker):
                return
            limit = self._max_tasks_per_child
            if limit is not None:
                window = min(window, limit - worker.sent)
            outstanding = worker.outstanding
            if len(outstanding) <= 1:
                worker.ahead = 0  # none waits behind the running task
            if outstanding and worker.ready and (worker.conn.unsent or self._num_workers > 1 and _overdue(worker)):
                # What it would be sent waits for another worker, or for this one to read what it
                # was sent: behind a message still waiting to go, a task sent ahead and cancelled
                # meanwhile started before its cancel went (19 of 20, where the program ran a thread).
                return
            had = worker.path  # the sys.path the worker has before these tasks
            has = had  # and before the next one
            while len(outstanding) < window:
                if outstanding and outstanding[-1]._timeout is not None:
                    break  # nothing goes behind a task with a timeout
                handle = self._next_locked()
                if handle is None:
                    break
                if handle._timeout is not None and outstanding:
                    self._requeue_locked(handle)  # it waits for an idle worker
                    break
                # A busy worker may not read its pipe until its task ends (maybe a C call
                # holding the GIL): what is sent ahead must fit, or the loop's send blocks for good.
                # A task under another sys.path or other filters goes only to an idle worker:
                # each change sent ahead is another message of them, filters and all.
                path = handle._payload[3]
                if outstanding and path is not has:
                    self._requeue_locked(handle)
                    break
                if outstanding and worker.ready:  # sent ahead now, or not at all
                    unread = _message_bytes(handle)
                    if worker.ahead + unread > _AHEAD_BYTES:
                        self._requeue_locked(handle)  # it waits for a worker that reads
                        break
                    worker.ahead += unread
                has = path
                handle._started_at = time.perf_counter()
                outstanding.append(handle)
                batch.append(handle)
            if not batch:
                return
            self._assigned_locked(worker, batch)
            if not worker.ready:  # its first tasks: given to it now (counted, and in order), sent once it is ready
                worker.held = (batch, had)
                self._holding = True
                return
            payloads = [handle._payload for handle in batch]
        with worker.send_lock:
            _send_tasks(worker, batch, payloads, had)

    def _send_held(self, worker: _Worker) -> None:
        """Send ``worker``, ready now, the first tasks it was given while it started.

        They are all it has, so it reads the whole message before it starts any
        of them. Those that ended meanwhile (cancelled) are no longer its.
        """
        with self._lock:
            held, worker.held = worker.held, None
            if held is None or worker.killing:  # (killing: they go back to the queue as it dies)
                return
            held_batch, had = held
            batch = []
            for handle in held_batch:
                if handle._state == RUNNING:
                    batch.append(handle)
                else:  # cancelled, and taken here before its cancel reached _abandoned
                    worker.outstanding.remove(handle)
                    handle._code_returned()
            worker.path = batch[0]._payload[3] if batch else had  # what it will have read
            payloads = [handle._payload for handle in batch]
        with worker.send_lock:
            _send_tasks(worker, batch, payloads, had)

    def _requeue_held_locked(self, worker: _Worker) -> None:
        """Put the tasks held for ``worker``, which it will not take now, back in the queue, in order."""
        for handle in reversed(self._take_back_held_locked(worker)):
            self._requeue_locked(handle)

    def _drop_held_locked(self, worker: _Worker, handle: AsyncHandle[Any]) -> None:
        """Take ``handle``, cancelled, out of the tasks held for ``worker``: its code never ran.

        Left there until they were sent or given back, it kept the worker
        counted busy, and ``cancel_with_timeout`` waited its whole timeout.
        The last of them taken from a recycled worker leaves it nothing but
        its start: the loop is woken to set its bound (``_LEAVING_START_GRACE``),
        which it sets only as it looks (an idle pool's loop waited with no
        deadline, the worker stuck in its initializer for good).
        """
        assert worker.held is not None
        batch, had = worker.held
        batch.remove(handle)
        worker.outstanding.remove(handle)
        worker.sent -= 1
        if not batch:
            worker.held = None
            worker.path = had  # it never got theirs
            if _starting_for_nothing(worker):
                self._wake()
        handle._code_returned()

    def _take_back_held_locked(self, worker: _Worker) -> list[AsyncHandle[Any]]:
        """Take the tasks held for ``worker`` back from it; return those still to run, in order."""
        if worker.held is None:
            return []
        batch, had = worker.held
        worker.held = None
        worker.sent -= len(batch)
        worker.path = had  # theirs never sent: the worker has the one from before them
        for handle in batch:
            worker.outstanding.remove(handle)
            if handle._state != RUNNING:  # cancelled, and taken here before its cancel reached _abandoned
                handle._code_returned()
        return [handle for handle in batch if handle._state == RUNNING]

    def _assigned_locked(self, worker: _Worker, batch: list[AsyncHandle[Any]]) -> None:
        """Count the tasks of ``batch`` given to ``worker``, which will have their last one's ``sys.path``."""
        worker.sent += len(batch)
        self._recycle_if_spent_locked(worker)
        if self._stale and len(worker.outstanding) == len(batch):  # it was idle: its tasks from before a shrink ended
            self._stale.discard(worker)
        worker.path = batch[0]._payload[3]  # one for the batch (_dispatch)

    def _idle_worker_locked(self, handle: AsyncHandle[Any]) -> _Worker | None:
        """A worker ``handle`` may go to straight from ``submit()``; else None (the loop sends it).

        Only when nothing is queued (priorities and order hold), the loop has
        nothing to decide (not paused, broken, stopping or short of workers), and
        the task fits in the worker's socket at once (``direct_bytes``), so that
        sending it never waits for the worker to read. Sending from the
        submitting thread saves waking the loop thread, a third of a no-op's
        round trip; for a map's first chunks (a list's items, pickled), it saved
        the wait for the loop thread, which the submitting thread held the GIL
        from while it pickled the next chunk.
        """
        if self._queued or self._paused or self._broken is not None or self._terminating or self._loop is None:
            return None
        if self._holding:  # an idle worker takes the tasks held for one starting first, by priority
            return None
        function, data, buffers, _ = handle._payload
        if buffers:
            return None
        size = len(function) + len(data)
        staying, idle, finishing = 0, None, False
        for worker in self._workers:
            if not worker.leaving:
                staying += 1
                if idle is None and worker.ready and not (worker.outstanding or worker.killing):
                    idle = worker
            elif worker.outstanding:
                finishing = True  # a recycled worker's last tasks: its replacement may have to wait
        if staying != self._num_workers or finishing:
            return None  # the loop must start a worker, or choose those that take tasks: it hears of the task
        if idle is not None and size > idle.direct_bytes:
            return None  # its send could wait for the worker to read
        return idle

    def _send_directly(self, worker: _Worker, handle: AsyncHandle[Any]) -> bool:
        """Send ``handle`` to the idle ``worker`` from the submitting thread; False if it is idle no more.

        The worker's send lock is taken first, then the pool's, so that nothing
        else is sent to it in between; both with ``with``: CPython raises a
        pending Ctrl-C as a C call returns, and after an ``acquire()`` that
        would leave the lock taken for good. Interrupted once the task is
        counted as sent, before the message left or while it did, the worker
        cannot be trusted to answer in the order the parent expects: it is
        replaced, and its tasks end as cancelled.
        """
        with worker.send_lock:
            try:
                with self._lock:
                    self._refuse_if_closed_locked()
                    if self._idle_worker_locked(handle) is not worker:
                        return False
                    started = time.perf_counter()
                    handle._observer.task_submitted(handle)
                    self._active += 1  # before the append: a Ctrl-C as it returns finds the task counted
                    handle._state = RUNNING
                    handle._on_worker = ON_WORKER
                    handle._started_at = started
                    worker.outstanding.append(handle)
                    had = worker.path
                    self._assigned_locked(worker, [handle])
                    payload = handle._payload
                _send_tasks(worker, [handle], [payload], had)
                if worker.conn.unsent:  # (its pipe was fuller than its bound allowed for): the loop sends the rest
                    self._wake()
            except BaseException:
                if handle in worker.outstanding or worker.conn.cut:
                    with self._lock:
                        worker.killing, worker.stop_for = True, None  # its pipe may hold half a message
                        worker.stop_reason = "cancelled"
                    self._wake()
                raise
        return True

    def _recycle_if_spent_locked(self, worker: _Worker) -> None:
        """Replace ``worker`` once its tasks end if it was sent ``max_tasks_per_child`` of them."""
        limit = self._max_tasks_per_child
        if limit is not None and worker.sent >= limit:
            self._recycle_locked(worker, "max_tasks_per_child")

    def _recycle_locked(self, worker: _Worker, reason: str) -> None:
        """Replace ``worker`` once it has finished the tasks it has: it takes no more.

        ``reason`` is counted in ``info()["worker_restart_reasons"]``; an empty one
        (a new set-up) is not counted as a restart. A replacement starts at once.
        A worker recycled already (``max_tasks_per_child``) that a new set-up
        replaces too gives up the tasks it holds, and its place (``_full_locked``):
        stuck in the old initializer, it held both for good.
        """
        if worker.leaving:
            if not reason and not worker.retiring:
                worker.retiring = True
                self._requeue_held_locked(worker)
            return
        worker.leaving = True
        self._replacing = True
        if reason:
            worker.stop_reason = reason
        else:
            worker.retiring = True
        if reason != "max_tasks_per_child":  # (those it holds are its last: it runs them first)
            self._requeue_held_locked(worker)  # never sent: they run on another worker
        self._control.append((worker, ("stop",)))
        # A look sends the stop and starts the replacement. Recycled as the loop sent it
        # its last task (after the look decided which workers to start), or as that task
        # went straight from submit(), it had neither until the next result came: with
        # tasks queued, or a prestarted pool, one worker short while that task ran.
        self._wake()

    def _replace_if_too_many_threads_locked(self, worker: _Worker, finishing: int = 0) -> None:
        """Replace ``worker`` if it started with more BLAS and OpenMP threads, or CPUs, than the pool's size gives now.

        A library takes its thread count as it loads, from the worker's
        environment (:func:`thread_limits`): grown from one worker to two on
        two cores, the pool ran the first worker's two threads beside the new
        one's one, for good. Replaced once it is ready and idle (a busy one,
        replaced, ran beside its replacement: more workers at work than the
        pool's size), and only while another worker is ready: where no new one
        can start (no process left), it goes on running the tasks. Asked when
        the pool grows, when a worker gets ready (it, and each idle one), and
        when it ends its tasks. A worker started under a larger pool has fewer
        threads than its share, which oversubscribes nothing: kept. The same
        holds for its share of the CPUs (:func:`cpu_share`), which sizes the
        pools its tasks start: one started with a larger share than the new
        size gives is replaced, even where the user set every BLAS variable.
        ``finishing``: how many of its tasks just ended, their results not yet seen.
        """
        if not worker.too_many_threads or len(worker.outstanding) > finishing or worker.leaving or not worker.ready:
            return
        if any(other is not worker and other.ready and not other.leaving for other in self._workers):
            self._recycle_locked(worker, "")

    def _take_queued_locked(self) -> list[AsyncHandle[Any]]:
        """Claim every queued task (to fail them: the pool starts no workers)."""
        taken = []
        while (handle := self._next_locked()) is not None:
            taken.append(handle)
        return taken

    def _receive_all(self, worker: _Worker) -> None:
        """Take every message waiting on the pipe: one wake-up, many results."""
        running = len(worker.outstanding)
        self._receive(worker)
        self._receive_buffered(worker, running)

    def _receive_buffered(self, worker: _Worker, running: int) -> None:
        """Take the messages of ``worker`` already read from its pipe; hand what it printed and logged to the Delivery."""
        while worker.conn.buffered() and worker in self._workers and worker.waiting is None:
            self._receive(worker)
        if worker.undelivered:
            self._deliver(worker)
        if self._max_worker_memory is not None and len(worker.outstanding) < running and worker.outstanding:
            self._recycle_if_over_memory(worker)  # it still has tasks: checked once per batch of results

    def _deliver(self, worker: _Worker) -> None:
        """Hand what ``worker`` printed and logged to the Delivery; read no more of it until delivered."""
        batch, worker.undelivered = worker.undelivered, []
        worker.delivering = True
        self._unread += 1
        if worker.delivery is None:
            worker.delivery = Delivery(self._delivered_by_thread)
        worker.delivery.put(worker, batch)

    def _delivered_by_thread(self, worker: _Worker) -> None:
        """On the Delivery's thread: ``worker``'s batch is delivered; the loop reads on."""
        self._delivered.append(worker)
        self._wake()

    def _notice_ends_while_delivering(self) -> None:
        """Replace each worker whose process ended while its output was delivered.

        The loop reads nothing of such a worker, its end of file included: one
        killed at its task's timeout as it printed into a blocked stream was
        never replaced, and the pool counted it live and busy for good. One the
        pool stopped (at a timeout, a forced cancel) had its task settled then,
        or has it timed out once its output is written: what it wrote before
        it ended is read now, without waiting, and delivered after the rest,
        the timeout after that (:meth:`_time_out_after_output`). One that ended
        on its own (recycled, crashed) is read to its end once its output is
        delivered, as ever: its result, or its crash, comes after what it
        printed. Meanwhile it leaves the pool: kept there, one that crashed as
        it printed into a blocked stream held its place until the stream was
        read, and a pool of one ran no task.
        """
        for worker in [w for w in self._workers if w.delivering and not w.exited]:
            if worker.process.poll() is None:
                continue
            if worker.killing:
                self._read_what_is_left(worker)
                self._worker_died(worker)
                continue
            with self._lock:
                worker.exited = worker.leaving = True
                self._requeue_held_locked(worker)
                self._requeue_not_started_locked(worker)
            self._wake()  # the next look starts its replacement

    def _requeue_not_started_locked(self, worker: _Worker) -> None:
        """Put the tasks sent to ``worker``, ended, that it never started back in the queue: they run on another.

        Those after the last task it started, as its crash journal says (all,
        if that one is none of them). Left with it, they waited for the stream
        its output waits for, while tasks submitted after them ran.
        """
        started = worker.journal.started()
        outstanding = list(worker.outstanding)
        ran = next((i for i, handle in enumerate(outstanding) if handle._id == started), -1)
        for handle in reversed(outstanding[ran + 1 :]):
            worker.outstanding.remove(handle)
            if handle._state == RUNNING:
                self._requeue_locked(handle)
            else:  # cancelled before it started: its code never ran
                handle._code_returned()

    def _read_what_is_left(self, worker: _Worker) -> None:
        """Read, without waiting, what ``worker`` (ended, its output being delivered) sent: results settle, lines go behind.

        The message that waited first (a task's result, before those of the
        tasks sent behind it). Stopped at shutdown without it, tasks that had
        ended, their results in the pipe, failed as never started.
        """
        waiting, worker.waiting = worker.waiting, None
        if waiting is not None and waiting is not _ENDED:
            self._take(worker, waiting)
        worker.conn.stop_waiting()
        try:
            while worker in self._workers:
                self._take(worker, worker.conn.recv())
        except (EOFError, OSError):  # all read
            pass
        if worker.undelivered and worker.delivery is not None:
            batch, worker.undelivered = worker.undelivered, []
            worker.delivery.put(worker, batch)  # behind the batch it is delivering: it stays paused till then

    def _read_on_after_delivery(self) -> None:
        """Read on from each worker whose output was delivered: the message that waited, then those read ahead."""
        while self._delivered:
            worker = self._delivered.popleft()
            if not worker.delivering:
                continue  # dropped since, with the loop that paused it (_recover_from_loop_death)
            worker.delivering = False
            self._unread -= 1
            waiting, worker.waiting = worker.waiting, None
            if worker not in self._workers:
                continue  # it died, or was stopped, meanwhile: its tasks were settled then
            running = len(worker.outstanding)
            if waiting is _ENDED:
                self._worker_died(worker)
                continue
            if waiting is not None:
                self._take(worker, waiting)
            self._receive_buffered(worker, running)  # (its pipe is watched again from the next look)

    def _recycle_if_over_memory(self, worker: _Worker) -> None:
        """Retire ``worker`` if its resident memory is over ``max_worker_memory``; tasks ended just now."""
        if worker.leaving or worker.killing:
            return
        rss = _resident_bytes(worker)
        with self._lock:
            limit = self._max_worker_memory
            if rss is not None and limit is not None and rss > limit and worker in self._workers and not worker.killing:
                self._recycle_locked(worker, "max_worker_memory")

    def _check_fresh_worker_memory(self, worker: _Worker) -> None:
        """Warn once if a worker is over ``max_worker_memory`` before any task: each would be replaced after each task."""
        rss = _resident_bytes(worker)
        limit = self._max_worker_memory
        if rss is None or limit is None or rss <= limit or self._memory_warned:
            return
        self._memory_warned = True
        _warn(
            "a new makeparallel worker process uses %d bytes (%.0f MiB) before running any task, over "
            "max_worker_memory=%d, so every worker will be replaced after every task: raise "
            "max_worker_memory above what a worker holds once set up (its initializer included)",
            rss, rss / 2**20, limit,
        )

    def _receive(self, worker: _Worker) -> None:
        """Read one message of ``worker``'s and act on it; or keep it waiting, behind what it printed before."""
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            if worker.undelivered:
                worker.waiting = _ENDED  # its death comes after what it printed
            else:
                self._worker_died(worker)
            return
        if worker.undelivered and message[0] not in _DELIVERED:
            worker.waiting = message  # its result comes after what it printed
            return
        self._take(worker, message)

    def _take(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        try:
            kind = message[0]
            if kind == "done":
                if worker.output_failed:  # its next task writes to this process's streams again, and may be told
                    worker.output_failed.clear()
                if self._max_worker_memory is not None and len(worker.outstanding) <= len(message[1]):
                    # It is about to be idle: checked before its results are seen and
                    # while it still looks busy, so that no task is sent to it meanwhile.
                    self._recycle_if_over_memory(worker)
                if worker.too_many_threads:  # (rare: the pool grew) replaced as it gets idle, as for memory
                    with self._lock:
                        self._replace_if_too_many_threads_locked(worker, finishing=len(message[1]))
                worker.returned_at = time.perf_counter()
                for task_id, ok, data, sizes, seconds in message[1]:
                    buffers = [worker.conn.recv_frame() for _ in sizes]
                    with self._lock:
                        handle = worker.outstanding.popleft()
                        stale = bool(worker.retried) and handle._id in worker.retried
                        if stale:
                            worker.retried.discard(handle._id)
                            self._late_attempt_ended_locked(handle)
                    if stale:  # an attempt that timed out and was retried: the retry's outcome is its own
                        continue
                    if handle._timing_out():  # it ended at its timeout, stopped or about to be: that came first
                        if self._partials:
                            self._partials.pop(handle._id, None)
                        handle._code_returned()
                        handle._time_out_stopped()
                    else:
                        self._settle(handle, ok, data, buffers, seconds)
            elif kind == "progress":
                _, task_id, fraction, text = message
                running = [h for h in worker.outstanding if h._id == task_id]
                if running and running[0]._state == RUNNING and not (worker.retried and task_id in worker.retried):
                    running[0]._report_progress(fraction, text)
            elif kind == "log":
                _, attributes, extras, metadata, owner = message
                if owner is not None:  # a task of this process's (others send their metadata, or have none)
                    logged = [h for h in worker.outstanding if h._id == owner]
                    attributes["task_metadata"] = logged[0].get_all_metadata() if logged else {}
                elif metadata is None and "task_metadata" not in extras:
                    attributes["task_metadata"] = {}
                worker.undelivered.append(functools.partial(_emit_log, attributes, extras, metadata))
            elif kind == "partial":
                _, task_id, data, sizes = message
                buffers = [worker.conn.recv_frame() for _ in sizes]
                self._add_partial(task_id, data, buffers)
            elif kind == "output":
                task_id = worker.outstanding[0]._id if worker.outstanding else None  # (output comes before its result)
                worker.undelivered.append(functools.partial(self._write_output, worker, task_id, *message[1:]))
            elif kind == "started":
                self._started(worker, message[1])
            elif kind == "ready":
                if worker.process.pid is None:  # forked: the template's report may come later
                    worker.process.pid = message[1]
                _serialization.take_worker_finders(message[2])
                with self._lock:
                    worker.ready = True
                    self._failed_starts = 0
                    if sum(1 for w in self._workers if not (w.leaving or w.retiring or w.killing)) >= self._num_workers:
                        # Whole again. (One started before a refusal, ready after it, leaves the pool short:
                        # a prestarted pool short of descriptors said nothing of it while idle.)
                        self._short_of_workers = None
                    if self._broken is not None and not (worker.leaving or worker.retiring or worker.killing):
                        # It started as the others failed: the pool serves on with it (_short_of_workers_locked).
                        self._broken = self._refused_until = None
                    for idle in list(self._workers):  # each idle one, this one included
                        self._replace_if_too_many_threads_locked(idle)
                if self._max_worker_memory is not None:
                    self._check_fresh_worker_memory(worker)
                if worker.held is not None:
                    self._send_held(worker)
            elif kind == "refused":
                worker.refused = OSError(errno.EAGAIN, f"the worker could not start a thread ({message[1]})")
            elif kind == "init_failed":
                worker.init_error = _initializer_error(message[1])
        except (EOFError, OSError):
            self._worker_died(worker)

    def _write_output(self, worker: _Worker, task_id: int | None, stream: int, text: str | bytes, *encoding: str) -> None:
        """On the Delivery's thread: write what ``worker`` printed; tell task ``task_id`` once if the stream failed.

        Bytes come with the encoding the worker's stream said (``write_relayed`` decodes them so where needed).

        The loop reads none of ``worker``'s messages meanwhile: ``output_failed``
        is this thread's until the delivery ends.
        """
        failure = write_relayed(stream, text, worker.decoders, *encoding)
        if failure is not None and task_id is not None and stream not in worker.output_failed:
            worker.output_failed.add(stream)  # told once: it raises from then on, in the task that wrote
            with self._lock:
                self._control.append((worker, ("output_failed", task_id, stream, *failure)))
            self._wake()

    def _add_partial(self, task_id: int, data: bytes, buffers: list[Any]) -> None:
        done, failed, unread, pieces = self._partials.get(task_id) or ([], None, 0, [])
        try:
            done.extend(_serialization.loads(data, buffers))
        except Exception as error:  # the chunk fails with it when it ends
            failed = failed or error
            length = _list_length(data)
            unread = None if unread is None or length is None else unread + length
            pieces.append((len(done), data, buffers))  # its map reads what it can of it (after_unreadable)
        self._partials[task_id] = (done, failed, unread, pieces)

    def _started(self, worker: _Worker, task_id: int) -> None:
        """A timed task started on its worker: its timeout counts from now."""
        with self._lock:
            handle = worker.outstanding[0] if worker.outstanding else None
            if handle is None or handle._id != task_id or handle._state != RUNNING:
                return
            handle._started_at = time.perf_counter()
        _deadlines.schedule(handle, handle._started_at + handle._timeout, weakly=True)  # type: ignore[operator]

    def _settle(self, handle: AsyncHandle[Any], ok: bool, data: Any, buffers: list[Any], seconds: float) -> None:
        """Settle ``handle`` with what its worker sent: ``data``, its result pickled, or for a failure ``(error pickled, traceback, "Type: message")``."""
        self._mean_seconds = 0.9 * self._mean_seconds + 0.1 * seconds
        self._window = 32 if self._mean_seconds < _SHORT_TASK else 1
        handle._code_returned()
        streamed = self._partials.pop(handle._id, None) if self._partials else None
        if handle._state != RUNNING:
            return  # timed out or cancelled meanwhile: the late outcome is dropped
        value: Any = None
        remote_traceback = raised = ""
        try:
            if not ok:  # read apart from the error, which may not be readable here (_process_worker._failure_sent)
                data, remote_traceback, raised = data
            value = _serialization.loads(data, buffers)
            # Results a map chunk sent that could not be read fail first: before an item's error too.
            if streamed is not None and (ok or streamed[1] is not None):
                done, failed, _, _ = streamed
                if failed is not None:
                    raise failed
                done.extend(value)
                value = done
        except BaseException as error:  # unpickling runs the user's code: nothing may end the loop
            # The task's error itself, not results of a map chunk's sent before it, could not be read.
            error_unread = not ok and (streamed is None or error is not streamed[1])
            what = f" ({raised})" if error_unread and raised else ""
            unreadable = TaskSerializationError(
                f"the result of task {handle._id} ({handle.name}) came back from the worker "
                f"but could not be unpickled here: {described(error)}"
                if ok
                else f"task {handle._id} ({handle.name}) raised an exception in its worker process{what} "
                f"that could not be unpickled here: {described(error)}. Raise exceptions this "
                "process can import too (classes of a module both import), holding data it can"
            )
            if error_unread and remote_traceback:  # where it was raised, its whole chain as the worker printed it
                attach_remote_traceback(unreadable, remote_traceback)
            # A map fails the items of the chunk that ran with it (after_unreadable): how
            # many results there were, if a list (a chunk stopped at its budget has fewer).
            # The last results may have been read (an earlier slice was not): their count is theirs.
            if ok:
                sent = _results_sent(streamed, len(value) if type(value) is list else _list_length(data))
            else:  # an item's error: after results sent that could not be read (they count), or itself unreadable
                sent = _results_sent(streamed, 0) if streamed is not None and error is streamed[1] else None
            vars(unreadable)["_unreadable"] = (error, sent, raised if error_unread else "")
            if sent is not None:  # the results as they came, for the map to read each it can (after_unreadable)
                last = value if type(value) is list or not ok else (data, buffers)
                done, _, _, pieces = streamed if streamed is not None else ([], None, 0, [])
                vars(unreadable)["_results_as_sent"] = (done, pieces, [] if not ok else last)
            ok, value = False, unreadable
        else:
            if not ok:
                if remote_traceback:
                    attach_remote_traceback(value, remote_traceback)
                if streamed is not None and streamed[1] is None and not isinstance(value, KeyboardInterrupt):
                    keep_results_before(handle, streamed[0])  # a map chunk's item raised: those before it
        handle._started_at = time.perf_counter() - seconds
        handle._finish(SUCCEEDED if ok else FAILED, value)

    def _worker_died(self, worker: _Worker, stoppable: bool = True) -> None:
        """Take ``worker`` out of the pool, its tasks requeued or failed; ``stoppable``: stop it and reap it first.

        One this process may not signal, deaf to its pipe, is left to end on
        its own, and reaped then (:meth:`_reap_left_to_end`).
        """
        with self._lock:
            if worker not in self._workers:
                return  # already handled
            self._workers.remove(worker)
            self._dying += 1
            self._replacing = True
            if worker.delivery is not None:
                worker.delivery.stop()  # once what it printed and logged is delivered
            outstanding = list(worker.outstanding)
            worker.outstanding.clear()
            worker.held = None  # in outstanding, never sent: they never started
            # Recycled (max_tasks_per_child, a new set-up...), a worker finishes its tasks, then
            # exits: one that died with a task still running crashed, whatever it was to do next.
            crashed = worker.leaving and not worker.killing and bool(outstanding)
            # An attempt that timed out and was retried: its end is not the retry's.
            late = [handle for handle in outstanding if handle._id in worker.retried] if worker.retried else []
            if late:
                outstanding = [handle for handle in outstanding if handle._id not in worker.retried]
            # Started before the pool was last configured, which users do once they fixed what made
            # workers fail to start, its failure is the old configuration's: the tasks submitted
            # since run elsewhere (they failed with its old initializer error), and it counts as no
            # failed start of the new configuration. Those submitted before fail with it, as ever.
            outdated = worker.configured_at != self._configured_at
            init_failure = None
            if worker.init_error is not None:
                if outdated and not self._terminating:
                    for handle in reversed(outstanding):
                        if handle._state == RUNNING and handle._submitted_at >= self._configured_at:
                            self._requeue_locked(handle)
                init_failure = self._initializer_failed_locked(worker, not outdated, self._starts_none_locked())
            # Died before it was ready, and not because it was told to: a failed start too. (Leaving
            # is no telling: with max_tasks_per_child=1 a worker leaves as its one task is sent,
            # ready or not, and one that died starting was started again and again, uncounted.)
            unready = not (worker.ready or worker.retiring or worker.killing or self._terminating or outdated)
            terminating = self._terminating
            if init_failure is None and not terminating:  # (terminating: no worker is left to run them)
                for handle in reversed(outstanding[1:]):  # sent behind the running one: never started
                    if handle._state == RUNNING:
                        self._requeue_locked(handle)
            unreplaced = self._starts_none_locked()
            restart = None  # counted once the worker is reaped, unless the system refused it its start
            if not self._terminating and not unreplaced and (crashed or not worker.retiring):
                restart = "initializer failed" if init_failure is not None else "crashed" if crashed else worker.stop_reason
        streamed = self._partials.pop(outstanding[0]._id, None) if outstanding and self._partials else None
        _close(worker)
        if stoppable:
            code = _stop(worker.process)
        else:
            code = None
            self._left_to_end.append(worker.process)
        finished = self._journaled(worker, outstanding[0], streamed) if outstanding else None
        never_started = bool(outstanding) and worker.journal.started() != outstanding[0]._id
        worker.journal.close()
        # Known once it was reaped (_stop): a fork the system refused, or the template declined, never started.
        refused = worker.process.refused if isinstance(worker.process, ForkedProcess) else None
        refused = refused or worker.refused
        declined = False
        if isinstance(worker.process, ForkedProcess):
            declined = worker.process.declined
            self._close_template_if_outdated(worker.process.template)
        with self._lock:
            self._dying -= 1  # its death is counted in the same look at info()
            for handle in late:
                self._late_attempt_ended_locked(handle)
            if restart is not None and refused is None and not declined:  # no restart: it never started
                self._restarts[restart] = self._restarts.get(restart, 0) + 1
                if restart not in ("max_tasks_per_child", "stopped"):  # asked for (the configuration, a stop): no incident
                    self._recent_restarts.append((_now(), restart))
                    self._count_recent_restarts_locked()  # forget the old ones: bounded memory
            if unready and init_failure is None and _failed_start_of_its_own(worker.process):
                if refused is None:
                    self._died_unready_locked(worker, code)
                else:
                    there = self._has_workers_for_tasks_locked()
                    self._start_refused_locked(refused)
                    if there:
                        self._start_refused_at = _now()  # not asked again at once: this refusal's report woke the loop
            if never_started and init_failure is None and not terminating and outstanding[0]._state == RUNNING:
                # It died before it started the task (killed while idle, or with
                # its template): the task is not to blame, and runs elsewhere.
                self._requeue_locked(outstanding[0])
        if init_failure is not None:
            for handle in outstanding:
                if handle._state == RUNNING:
                    handle._finish(FAILED, init_failure())
        elif outstanding and outstanding[0]._timing_out():  # what it wrote as it was stopped came first
            self._time_out_after_output(worker, outstanding[0])
        elif outstanding and outstanding[0]._state == RUNNING:
            handle = outstanding[0]
            error: Exception
            if terminating and never_started:
                error = self._not_started_at_shutdown(handle, worker)
            elif terminating and not worker.exited:  # (one that ended before crashed: it says so)
                error = ShutdownError(
                    f"task {handle._id} ({handle.name}) was still running when makeparallel "
                    "shut down, and its worker process was stopped"
                )
            else:
                how = describe_exit(code)
                running = f"the worker process (pid {worker.process.pid}) running task {handle._id} ({handle.name})"
                with_template = isinstance(worker.process, ForkedProcess) and worker.process.with_template
                if with_template:  # (every worker died with it: no task's fault)
                    error = WorkerCrashedError(f"{running} died with {how}: {template_died(not unreplaced)}")
                elif unreplaced:
                    error = WorkerCrashedError(
                        f"{running} died with {how}; {UNREPLACED}, and no other task was affected"
                    )
                else:
                    error = WorkerCrashedError(
                        f"{running} died with {how}; a new worker takes its place, and no other task was affected"
                    )
                if with_template:
                    error._with_template = True  # type: ignore[attr-defined]  # for a map: no item to blame it on
                if unreplaced:
                    error._unreplaced = True  # type: ignore[attr-defined]  # for a map: its message says so too
                error._how = how  # type: ignore[attr-defined]  # for a map (_process_chunks)
                if finished is not None:  # what a map chunk finished and how many items started ([], 0 for a task)
                    error._crash = (*finished, how)  # type: ignore[attr-defined]
            handle._finish(FAILED, error)
        if terminating and init_failure is None:
            for handle in outstanding[1:]:  # sent behind the first: never started
                if handle._state == RUNNING:
                    handle._finish(FAILED, self._not_started_at_shutdown(handle, worker))
        for handle in outstanding:
            if handle._state != PENDING:  # not put back in the queue: it runs nowhere now
                handle._code_returned()
        self._wake()

    @staticmethod
    def _time_out_after_output(worker: _Worker, handle: AsyncHandle[Any]) -> None:
        """Time out ``handle``, its ``worker`` stopped at its timeout and gone, once what that worker wrote is written.

        A worker that ended as its output was still being delivered had the
        rest of it read and put behind (:meth:`_read_what_is_left`): the handle
        is timed out on the worker's Delivery thread, after that. Timed out at
        once, its waiter had the error before the task's last lines, which
        went to whatever ``sys.stdout`` was by the time they were written. A
        stream that stays blocked holds it no longer than the kill's grace: its
        deadline times it out then (:meth:`_stops_before_timing_out_locked`).
        """
        if not worker.delivering or worker.delivery is None:
            handle._time_out_stopped()
            return
        worker.delivery.put(worker, [handle._time_out_stopped])
        worker.delivery.stop()  # (again: its thread may have ended as the batches before were delivered)

    @staticmethod
    def _journaled(
        worker: _Worker, handle: AsyncHandle[Any], streamed: _Streamed | None
    ) -> tuple[list[Any], int] | None:
        """The results a dead worker's map chunk finished (those it sent, then those in its journal); how many items started.

        ``([], 0)`` where the journal holds none of the task's items and none
        were sent: a chunk whose worker died before its first item (as it
        unpickled them), or a task that is no map chunk. ``None`` if the
        results cannot all be had (one that cannot be unpickled here): the
        chunk then fails as a whole, rather than run an item twice.
        """
        done, failed, _, _ = streamed if streamed is not None else ([], None, 0, [])
        if failed is not None:
            return None
        try:
            journaled = worker.journal.unsent(handle._id, len(done))
        except BaseException:  # unpickling runs the user's code: nothing may end the loop
            return None
        if journaled is None:
            return None if done else ([], 0)
        unsent, ran = journaled
        return done + unsent, ran

    def _starts_none_locked(self) -> bool:
        """Whether the pool starts no worker in place of one that ends now: it is shutting down, and no task waits.

        Closed (a shutdown waits for the tasks), the pool starts a worker only
        for tasks still waiting for one: with none, a worker's death is no
        restart, and its task's error says so. Counted and told "a new worker
        takes its place" (or, where its initializer failed, "the pool will start
        a new worker"), it showed in the restarts (and a restart storm in
        ``health()``) of a pool that was ending, and started none. Tasks held
        for a worker still starting are looked for among the workers left:
        ``_holding``, set as the last pass looked, still counts those of a
        worker that died starting (its initializer raised), and the pool was
        said to replace it.
        """
        if not self._closed or self._queued:
            return False
        return not (self._holding and any(other.held is not None for other in self._workers))

    def _initializer_failed_locked(
        self, worker: _Worker, counted: bool, unreplaced: bool
    ) -> Callable[[], BaseException]:
        """Count a failed start (``counted``); after a few in a row, stop starting workers. Return the error's maker.

        ``unreplaced``: the pool is shutting down and starts no worker in its
        place, which the error says (it said "the pool will start a new worker").
        """
        cause = worker.init_error
        assert cause is not None
        if counted:
            self._failed_starts += 1
        name = worker.initializer  # the pool's may have been replaced since the worker ran it
        gave_up = counted and self._failed_starts >= _FAILED_STARTS_ALLOWED
        if gave_up and self._short_of_workers_locked(f"the initializer {name} raised {described(cause)}"):
            gave_up = False

        def make_error() -> BaseException:
            error = WorkerCrashedError(
                f"the worker initializer {name} raised {described(cause)}; "
                f"the task was not run, and {_after_failed_start(gave_up, unreplaced)}"
            )
            error.__cause__ = cause
            return error

        if gave_up:
            self._broken = make_error
        return make_error

    def _not_started_at_shutdown(self, handle: AsyncHandle[Any], worker: _Worker | None = None) -> ShutdownError:
        """The error of ``handle``, not started when the pool stopped its workers: still queued, or sent to ``worker``.

        Where that worker was still starting, the message says so, and names the
        pool's initializer it was running: the culprit, rather than the task.
        """
        if worker is None:
            stopped = "its worker processes"
        elif worker.ready:
            stopped = "its worker process"
        elif worker.initializer:
            stopped = f"its worker process, which was still running the initializer {worker.initializer}"
        else:
            stopped = "its worker process, which was still starting"
        return ShutdownError(
            f"task {handle._id} ({handle.name}) had not started when makeparallel shut down and stopped {stopped}"
        )

    def _died_unready_locked(self, worker: _Worker, code: int | None) -> None:
        """Count a worker that died while it started up; after a few in a row, stop starting workers.

        Its task, never started, went back to the queue; once the pool gives
        up, the queue fails with this error, not a restart loop. Only a worker
        started after the last death counted counts: those starting beside it
        that die with it (a ``SIGTERM`` to the process group, which the
        program handles, ends every worker still in its initializer) are one
        failed start, not a row of them, so the pool goes on with new workers;
        a start-up that fails every time still fails once per round of starts.
        """
        if worker.start_round != self._start_round:
            return
        self._start_round += 1
        self._failed_starts += 1
        if self._failed_starts < _FAILED_STARTS_ALLOWED:
            return
        name = self._setup.name
        during = f"before any task, or in the initializer {name}" if name else "before any task"
        if self._short_of_workers_locked(f"workers died while they started up ({during}), the last with {describe_exit(code)}"):
            return

        def make_error() -> BaseException:
            return WorkerCrashedError(
                f"worker processes died while they started up ({during}), the last with "
                f"{describe_exit(code)}; the task was not run, and {_after_failed_start(True)}"
            )

        self._broken = make_error

    def _start_refused_locked(self, error: OSError) -> bool:
        """Take note of a worker the system refused to start; return whether to stop starting workers now.

        While the pool has workers, they take the tasks, and the next look
        tries again: a brief want of descriptors must not fail tasks that the
        workers there can run. With none, the refusal counts as a failed start;
        after a few in a row the pool gives up, and the queued tasks fail with
        an error that names ``error``, for ``_RETRY_REFUSED_AFTER`` seconds:
        then the next task tries again. A brief want of descriptors as workers
        were recycled (``max_tasks_per_child``) left the pool with none, and
        it failed every task for good once the service had them again.
        """
        if self._has_workers_for_tasks_locked():
            self._short_of_workers = f"{type(error).__name__}: {error}"
            return True
        self._failed_starts += 1
        if self._failed_starts < _FAILED_STARTS_ALLOWED:
            return False
        why = f"{type(error).__name__}: {error}"
        if error.errno == errno.E2BIG:
            why += "; the environment and sys.path take more than the system gives a new program"

        def make_error() -> BaseException:
            return WorkerCrashedError(
                f"the system refused to start a worker process ({why}); the task was not run, and "
                f"after {_FAILED_STARTS_ALLOWED} refusals in a row the pool fails new tasks at once "
                f"for {_RETRY_REFUSED_AFTER:g} s, then tries again"
            )

        self._broken = make_error
        self._refused_until = _now() + _RETRY_REFUSED_AFTER
        return True

    def _short_of_workers_locked(self, why: str) -> bool:
        """After failed starts in a row: go on with the workers there, if any, and try again a while later.

        Returns whether there are such workers: ready ones, which started as
        the others could not (one still starting may fail as they did). Else
        the pool gives up (the caller). A ready worker was left idle while the
        pool failed every task, until it was configured again, when a
        replacement's start had failed three times (an initializer's resource
        out for a moment, as a worker crashed): the standard library's ``Pool``
        serves on with the workers it has. Said in ``refused_starts`` (and
        ``health()``) until the pool has all its workers again.
        """
        if not any(w.ready and not (w.leaving or w.retiring or w.killing) for w in self._workers):
            return False
        self._short_of_workers = why
        self._start_refused_at = _now()  # the next start is a while away: no restart loop
        return True

    def _has_workers_for_tasks_locked(self) -> bool:
        """Whether a worker is there that takes tasks: one not leaving, retiring or being killed."""
        return any(not (w.leaving or w.retiring or w.killing) for w in self._workers)

    def _end_overdue_exits(self) -> None:
        """Kill each worker told to stop that has not exited ``_EXIT_GRACE`` seconds after its tasks ended.

        One whose task left a thread running that is not a daemon waits for
        that thread as it exits, for good. Left to it, recycled workers
        (``max_tasks_per_child``) that never exited kept their replacements
        from starting, and the pool stopped taking tasks, without a word (the
        standard library's pools do the same).
        """
        now = time.monotonic()
        for worker in self._workers:
            if worker.exited or not worker.leaving:
                continue
            if _starting_for_nothing(worker):
                if _now() - worker.started_at >= _LEAVING_START_GRACE:
                    self._end_start_for_nothing(worker)
                continue
            if not _exiting(worker):
                continue
            if worker.exit_by is None:
                worker.exit_by = now + _EXIT_GRACE
            elif now >= worker.exit_by:
                _warn(
                    "a makeparallel worker process (pid %s), told to stop (%s), has not exited %.0f s "
                    "after its last task, and is killed: a task may have left a thread running that "
                    "is not a daemon, or an atexit handler hangs",
                    worker.process.pid, worker.stop_reason if not worker.retiring else "the pool changed",
                    _EXIT_GRACE,
                )
                with self._lock:
                    worker.killing, worker.stop_for = True, None

    def _end_start_for_nothing(self, worker: _Worker) -> None:
        """Kill ``worker``, told to stop while it started, its tasks given to others, and still in its initializer.

        It reads the stop only once set up, and would run no task: an
        initializer that never returns kept it for good, counted as the one
        recycled worker that may overlap its replacement (:meth:`_maintain`),
        and a second one stuck as it was recycled stalled a pool of one.
        Left out of that count instead, the pool ran more processes than
        ``num_workers`` allows (a worker that gave its tasks to its ready
        replacement started another before it ended its own start). Killed
        after :data:`_LEAVING_START_GRACE` seconds, it counts until it is reaped.
        """
        _warn(
            "a makeparallel worker process (pid %s), told to stop (%s) with no task left, is still starting%s "
            "%.0f s after it began, and is killed: it would run no task",
            worker.process.pid, worker.stop_reason if not worker.retiring else "the pool changed",
            f" (initializer {worker.initializer})" if worker.initializer else "", _LEAVING_START_GRACE,
        )
        with self._lock:
            worker.killing, worker.stop_for = True, None

    def _kill_marked(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.exited:  # ended already: nothing to kill
                continue
            if worker.stop_task is not None:
                with self._lock:
                    # Unless the stopped task ended by itself and its worker started one sent behind
                    # it, its result not read yet: a kill would end that task instead. (Killed
                    # already whatever it runs, it is killed as that asked.)
                    if worker.journal.started() == worker.stop_task._id and (
                        not worker.killing or worker.stop_for is not None
                    ):
                        self._kill_for_locked(worker, worker.stop_task, "stopped")
                    worker.stop_task = None
            if worker.forced:
                self._kill_forced(worker)
            if not worker.killing:
                continue
            if worker.kill_at is None:
                with self._lock:
                    task = None if worker.stop_for is None else worker.stop_for[0]
                    if task is not None and not (task in worker.outstanding and _runs(worker, task)):
                        self._spare_locked(worker)  # its task ended: the worker runs on
                        continue
                    if task is not None and worker.journal.started() != task._id:
                        worker.stop_for = task = None  # it starts that task next: killed whatever it runs
                    # Held back while the last SIGTERM sent is on its way: that one serves this kill.
                    signal_now = worker.journal.stop_for(0 if task is None else task._id)
                if signal_now and not _signalled(worker.process, kill=False):
                    _end_writing(worker)  # for good: it ends whatever it runs
                    worker.stop_for = None
                worker.kill_at = now + _TERMINATE_GRACE
            elif worker.process.poll() is None:
                if worker.stop_for is not None:
                    with self._lock:
                        task = worker.stop_for[0]
                        # It declined the signal; or its task ended, or it started another, and its
                        # handler has not run yet (the signal on its way, through a busy template; a
                        # C call holding the GIL; a task's own handler had it).
                        if (
                            worker.journal.declined()
                            or task not in worker.outstanding
                            or worker.journal.started() != task._id
                        ):
                            self._spare_locked(worker)  # the task ended as the signal came: the worker runs on
                            continue
                if worker.journal.signal_owed():  # the one on its way was declined before this kill was written
                    if not _signalled(worker.process, kill=False):
                        _end_writing(worker)
                        worker.stop_for = None
                    worker.kill_at = now + _TERMINATE_GRACE
                if now < worker.kill_at:
                    continue
                if not _signalled(worker.process, kill=True) or _not_forked(worker.process):
                    # Not ours to stop, and deaf to its end of file (a C call that holds the
                    # GIL): it ends when the call returns, and a new worker takes its place now.
                    # Or not forked yet by a template busy or stuck as it starts, which kills it
                    # once it forked it: asked again at every look, the loop spun, and blocked
                    # once the template's socket was full.
                    self._worker_died(worker, stoppable=False)

    def _kill_forced(self, worker: _Worker) -> None:
        """Kill ``worker`` for a task sent ahead and force-cancelled before it started, if it started since.

        The plain cancel sent for it stops it before it starts only if the
        worker reads it first: started meanwhile, it ran on to its end.
        Looked at every ``_FORCED_POLL`` seconds until it ended or was dropped.
        """
        with self._lock:
            worker.forced = [handle for handle in worker.forced if handle in worker.outstanding]
            started = worker.journal.started()
            for handle in worker.forced:
                if handle._id == started:
                    worker.forced.remove(handle)
                    self._kill_for_locked(worker, handle, "cancelled")
                    break

    def _spare_locked(self, worker: _Worker) -> None:
        """Call off the kill of ``worker``: the task it was for (``stop_for``) ended as the pool decided on it.

        A timeout or a forced cancel as the task returned had its worker killed
        once it ran the next task sent to it, which then failed as crashed;
        with a retry, the stopped attempt's result, read late, is dropped
        (``retried``). The journal says so before the worker is sent another
        task: a signal still on its way (through a busy template) is declined
        whenever it comes, and none is left naming a task as if its kill were
        still on (:meth:`JournalReader.call_off`).
        """
        assert worker.stop_for is not None
        _, worker.stop_reason = worker.stop_for
        worker.journal.call_off()
        worker.killing = False
        worker.kill_at = worker.stop_for = None

    def _reap_left_to_end(self) -> None:
        """Reap the workers left to end on their own (:meth:`_worker_died`) that ended: no zombie stays."""
        self._left_to_end = [process for process in self._left_to_end if process.poll() is None]

    def _next_due_in(self) -> float | None:
        """Seconds until a worker is to be killed or to have exited (or ended its start), a refused start tried again, or one left to end looked at."""
        now = time.monotonic()
        deadlines = []
        for w in self._workers:
            if w.exited:  # nothing is due: it leaves once its output is written
                continue
            if w.kill_at is not None:
                deadlines.append(w.kill_at)
            elif w.leaving and _exiting(w):  # (leaving first: the common case asks no more)
                deadlines.append(now if w.exit_by is None else w.exit_by)  # none yet: the next look sets it
            elif w.leaving and _starting_for_nothing(w):
                deadlines.append(now + max(0.0, w.started_at + _LEAVING_START_GRACE - _now()))  # (_now: its clock)
            elif w.delivering and not isinstance(w.process, ForkedProcess):
                # Its pipe unwatched, nothing tells of its end (a forked one's, its template does).
                deadlines.append(now + _EXIT_POLL)
            if w.forced or (w.kill_at is not None and (w.stop_for is not None or w.journal.signal_held())):  # (a task starts, a signal declined)
                deadlines.append(now + _FORCED_POLL)
        if self._left_to_end:
            deadlines.append(now + _TERMINATE_GRACE)
        if self._start_refused_at is not None:
            deadlines.append(self._start_refused_at + _RETRY_REFUSED_AFTER)
        return max(0.0, min(deadlines) - now) if deadlines else None


_PLAIN = frozenset({int, float, complex, bool, str, type(None), range})  # arguments any pickler writes alike, in band
# The same, or a function: it travels as its bytes, pickled once (``wrap_argument``).
_PLAIN_OR_FUNCTION = _PLAIN | {FunctionType}


def _serialize_call(handle: AsyncHandle[Any]) -> tuple[bytes, bytes, list[_pickle.PickleBuffer]]:
    """Pickle the task's call: the function (cached) and the arguments.

    A failure names the object that could not be pickled. Where no descriptor
    was left (``EMFILE``, ``ENFILE``: importing cloudpickle opens its files),
    the ``OSError`` is raised as it is: a ``TaskSerializationError`` blamed the
    function.
    """
    call = (handle._fn, handle._args, handle._kwargs)
    try:
        values = _process_context.capture_values(handle._context)
        plain = handle._args or ()
        if values is None and not handle._kwargs:
            # The common small call, and a map's chunk of a range: the C pickler writes
            # what cloudpickle's would, several times faster.
            if all(type(arg) in _PLAIN for arg in plain):
                return _serialization.dumps_function(handle._fn), _pickle.dumps((plain, {}), protocol=5), []
            if all(type(arg) in _PLAIN_OR_FUNCTION for arg in plain):
                data = _pickle.dumps((tuple(map(_serialization.wrap_argument, plain)), {}), protocol=5)
                return _serialization.dumps_function(handle._fn), data, []
        wrap = _serialization.wrap_argument
        args = tuple(map(wrap, plain))
        kwargs = {key: wrap(value) for key, value in (handle._kwargs or {}).items()}
        sent = (args, kwargs) if values is None else (args, kwargs, values)
        data, buffers = _serialization.dumps(sent)
        return _serialization.dumps_function(handle._fn), data, buffers
    except Exception as error:
        if isinstance(error, OSError) and error.errno in (errno.EMFILE, errno.ENFILE):
            raise  # the system's want, not the call's: pickling imports modules, which takes descriptors
        raise TaskSerializationError(
            f"task {handle._id} ({handle.name}) cannot be sent to a worker process: "
            f"{_culprit(call)} could not be pickled ({type(error).__name__}: {error}). "
            "Everything a process task receives must be picklable; backend='thread' "
            "needs no pickling"
        ) from error


def _culprit(call: tuple[Any, tuple[Any, ...] | None, dict[str, Any] | None]) -> str:
    fn, args, kwargs = call
    candidates: list[tuple[str, Any]] = [(f"the function {fn!r}", fn)]
    candidates += [(f"argument {i} ({_kind(a)})", a) for i, a in enumerate(args or ())]
    candidates += [(f"keyword argument {k!r} ({_kind(v)})", v) for k, v in (kwargs or {}).items()]
    for description, candidate in candidates:
        try:
            _serialization.dumps(candidate)
        except Exception:
            return description
    return "the call"


def _kind(value: Any) -> str:
    """What ``value`` is, for an error: the type of what it wraps, if it wraps a function (``__wrapped__``)."""
    return type(getattr(value, "__wrapped__", value)).__name__


def cpu_share(num_workers: int) -> int:
    """Each worker's share of the CPUs: ``max(1, usable CPUs // num_workers)``.

    Its usable CPUs (``_cpu_share``), from which the pools its
    tasks start take their default sizes, and its BLAS and OpenMP threads
    (:func:`thread_limits`): loky's and joblib's ``max_inner_num_threads``
    (cpu_count // n_jobs, joblib PR 940).
    """
    return max(1, usable_cpus().cpus // max(1, num_workers))


def thread_limits(num_workers: int) -> dict[str, str]:
    """The thread-count variables each worker gets: its :func:`cpu_share`, unless set here.

    Nor where the library reads a count set here instead (``OMP_NUM_THREADS=1`` alone is
    OpenBLAS's, MKL's and numexpr's limit too): set, the pool's would override the user's.
    In a worker, a variable its own pool set, still as the pool set it, is none of the
    user's (:func:`_users_count`): the pool its tasks start sets it from the worker's share.
    """
    per_worker = str(cpu_share(num_workers))
    return {
        name: per_worker
        for name in THREAD_LIMIT_VARIABLES
        if _users_count(name) is None
        and not any(_a_thread_count(_users_count(other)) for other in _FALLS_BACK_TO.get(name, ()))
    }


def _users_count(name: str) -> str | None:
    """The value of variable ``name`` here, if the user set it; ``None`` if unset, or set by this worker's pool.

    A worker's environment holds the counts its pool set (``_cpu_share.pool_thread_limits``).
    Taken for the user's, a nested pool passed them on unchanged: each of its workers ran the
    outer worker's share of BLAS threads, not a share of that. A count the user set, in the
    program or in a task (another value), stays the user's.
    """
    value = os.environ.get(name)
    return None if value is None or pool_thread_limits().get(name) == value else value


def _environment_for_workers(limits: dict[str, str]) -> dict[str, str]:
    """The environment a new worker gets: this process's, and the thread counts ``limits`` (:func:`thread_limits`).

    In a worker, without the counts its pool set there, still as set, that this pool sets
    none of (beside a user's ``OMP_NUM_THREADS`` that those libraries read): a nested
    worker's libraries take the user's count, as the outer pool's workers do.
    """
    environ = environment()
    for name, value in pool_thread_limits().items():
        if environ.get(name) == value:
            del environ[name]
    environ.update(limits)
    return environ


def _a_thread_count(value: str | None) -> bool:
    """Whether a library reads ``value`` as a count of threads: a positive number (OpenMP's ``4,2`` too).

    OpenBLAS takes an empty or zero ``OMP_NUM_THREADS`` for none, and runs a thread per core.
    """
    first = (value or "").split(",")[0].strip()
    return first.isdigit() and int(first) > 0


def _more_threads(worker: _Worker, limits: dict[str, str], share: int) -> bool:
    """Whether ``worker`` may run more BLAS and OpenMP threads than ``limits`` allow, or started with more than ``share`` CPUs."""
    started_with = worker.thread_limits
    return worker.cpu_share > share or any(int(count) > int(limits.get(name, count)) for name, count in started_with.items())


def _resident_bytes(worker: _Worker) -> int | None:
    """The worker process's resident memory (RSS) in bytes, or ``None`` if it is gone (or not yet known)."""
    if worker.memory_probe is None:
        if worker.process.pid is None:
            return None
        worker.memory_probe = ResidentMemory(worker.process.pid)
    return worker.memory_probe.read()


def _failed_start_of_its_own(process: subprocess.Popen[bytes] | ForkedProcess) -> bool:
    """Whether a worker that died before it was ready counts as a failed start (``process`` is reaped).

    Each does, but the workers of a template that died died with it, at once:
    they count as one, or a single kill of the template while a pool of three
    or more started made the pool give up. And one the template declined to
    fork (it runs other threads) never started: the next starts as a fresh
    interpreter.
    """
    if not isinstance(process, ForkedProcess):
        return True
    if process.declined:
        return False
    if process.template.alive:
        return True
    if process.template.death_counted:
        return False
    process.template.death_counted = True
    return True


def _stop(process: subprocess.Popen[bytes] | ForkedProcess) -> int | None:
    """Make sure ``process`` is gone and reaped (no zombie); return its exit code.

    The caller closed the worker's pipe first, which ends an idle worker cleanly
    and a busy one at once; one that does not end is terminated, then killed.
    """
    if _stop_together([process]):
        return None  # not ours to stop any more: it ends when it sees its pipe closed
    return process.wait()


def _stop_together(
    processes: list[subprocess.Popen[bytes] | ForkedProcess], every_worker: bool = False
) -> list[subprocess.Popen[bytes] | ForkedProcess]:
    """End ``processes``, their pipes closed: each a grace period to exit, then SIGTERM, then SIGKILL.

    All within the same two grace periods. A worker stuck in a C call that
    holds the GIL reads no end of file and runs no SIGTERM handler: it takes
    both. Stopped one after another, four such workers outlasted what
    ``terminate()`` waits for the loop, and ``shutdown()`` returned with
    workers still running.

    A worker its template has not forked by the end of the grace periods has
    a template busy (a slow import ahead of the tasks) or stuck before it
    serves (a ``sitecustomize`` that hangs). Waiting for the fork's report
    held up the pool's loop thread, and the results of every other worker,
    for as long; and for good with a stuck template, which outlived the
    program (shutdown gave up after 5 s; it is deaf to ``SIGTERM`` and
    Ctrl-C). With ``every_worker`` (these are all the pool's workers: it
    stops) the template is killed, its only end for a stuck one, which ends
    no worker that is not stopping too. Otherwise the worker is left to end:
    the template kills it as soon as it forked it, the kill asked after the
    fork; killing the template killed the running workers with it.

    Returns:
        Those still running that this process may no longer signal, left to
        end on their own; the others have exited or been killed, to be reaped.
    """
    import subprocess  # for TimeoutExpired; a first task on Linux has no other use for it

    left_alone: list[subprocess.Popen[bytes] | ForkedProcess] = []
    for kill in (False, True):
        deadline = time.monotonic() + _TERMINATE_GRACE
        running = []
        for process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                if process.poll() is None:
                    running.append(process)
        processes = []
        for process in running:
            if kill and _not_forked(process):
                if every_worker:
                    stopped = _template_killed(process)
                else:
                    process.kill()  # the template kills it once it forked it
                    stopped = False  # left to end on its own: not waited for
            else:
                stopped = _signalled(process, kill)
            (processes if stopped else left_alone).append(process)
    return left_alone


def _not_forked(process: subprocess.Popen[bytes] | ForkedProcess) -> TypeGuard[ForkedProcess]:
    """Whether ``process`` is a worker its template has not reported forking yet."""
    return isinstance(process, ForkedProcess) and process.pid is None


def _template_killed(process: ForkedProcess) -> bool:
    """Kill the template of ``process``, a worker it never forked; False if this process may no longer (``_signalled``)."""
    try:
        process.template.kill()
    except PermissionError:
        return False
    return True


def _list_length(data: bytes) -> int | None:
    """How many results a pickled slice or result of a map chunk holds, unread; ``None`` if not known."""
    try:
        return _serialization.list_length(data)
    except Exception:  # not a whole pickle
        return None


def _results_sent(streamed: _Streamed | None, last: int | None) -> int | None:
    """How many results a map chunk sent in all, read or not, ``last`` in its result; ``None`` if not known.

    (Not known, the chunk fails whole.)
    """
    if last is None or streamed is None:
        return last
    done, _, unread, _ = streamed
    return None if unread is None else len(done) + unread + last


def _signalled(process: subprocess.Popen[bytes] | ForkedProcess, kill: bool) -> bool:
    """Send ``process`` SIGKILL (``kill``) or SIGTERM; False if this process may no longer signal it.

    A program that dropped its privileges (``os.setuid``) may not signal a
    worker it started before, as root (``EPERM``): the loop thread died of it
    at the worker's timeout, with every task in the pool. A worker also ends
    when its pipe closes (:func:`_end_writing`): at once if idle, and once its
    reader thread notices if busy. (A forked one is signalled by its template,
    which may.)
    """
    try:
        if kill:
            process.kill()
        else:
            process.terminate()
    except PermissionError:
        return False
    return True


def _watch(selector: selectors.BaseSelector, before: list[_Worker], now: list[_Worker]) -> None:
    """Make ``selector`` watch the pipes of the workers ``now`` instead of those ``before``."""
    for worker in before:
        if worker not in now:
            _unwatch(selector, worker.conn)
    for worker in now:
        if worker not in before:
            selector.register(worker.conn, selectors.EVENT_READ, worker)
            worker.writing = False


def _unwatch(selector: selectors.BaseSelector, watched: Any) -> None:
    try:
        selector.unregister(watched)
    except (KeyError, ValueError):
        pass


def _start_fresh_interpreter(
    channel_fd: int, journal_fd: int, environ: dict[str, str], path: list[str]
) -> subprocess.Popen[bytes]:
    """A worker started as a new program, given its pipe's end ``channel_fd`` and its journal ``journal_fd``.

    Where this process closed its standard output or error, the new program
    gets ``os.devnull`` there (``inherits_standard_stream``): a task's output
    goes nowhere, not into the pool's pipe (numbered 3 or more, ``_fd_numbers``).

    It starts with Ctrl-C blocked (the mask of the thread that starts it),
    which its ``main`` unblocks once its own handler is in place, unless this
    process blocked it: a Ctrl-C to the process group as it started printed
    its ``KeyboardInterrupt`` on the program's output and killed it (a failed
    start; three, and the pool gave up), where the program handled it and
    meant to go on. A worker forked from the template has it ignored till then.
    """
    import signal
    import subprocess

    try:
        standard = [None if inherits_standard_stream(fd) else subprocess.DEVNULL for fd in (1, 2)]
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return subprocess.Popen(
                [
                    sys.executable,
                    *interpreter_options(),
                    "-c",
                    _WORKER_MAIN,
                    str(channel_fd),
                    str(os.getpid()),
                    str(journal_fd),
                    "0" if signal.SIGINT in mask else "1",  # whether the worker unblocks Ctrl-C
                    PACKAGE_FOLDER,
                    *path_arguments(path),
                ],
                pass_fds=(channel_fd, journal_fd),
                stdin=subprocess.DEVNULL,
                stdout=standard[0],
                stderr=standard[1],
                env=environ,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    except (ValueError, TypeError) as error:
        raise refused_start(error) from error
    except OSError as error:
        if error.filename == sys.executable:
            raise refused_start(error) from error
        raise


def _end_writing(worker: _Worker) -> None:
    """Send ``worker`` an end of file, which it takes for its parent's death; its own end of file then says it ended."""
    locked = worker.send_lock.acquire(timeout=_TERMINATE_GRACE)
    try:
        worker.conn.end_writing()
    except OSError:
        pass  # gone already
    finally:
        if locked:
            worker.send_lock.release()


def _close(worker: _Worker) -> None:
    """Close the parent's end of ``worker``'s pipe, never while a thread sends on it.

    A send never takes long (a worker reads its pipe), so the wait is bounded.
    """
    locked = worker.send_lock.acquire(timeout=_TERMINATE_GRACE)
    try:
        worker.conn.close()
    finally:
        if locked:
            worker.send_lock.release()


def _send_tasks(worker: _Worker, batch: list[AsyncHandle[Any]], payloads: list[Any], had: _WorkersPath) -> None:
    """Send ``batch`` to ``worker``, which has ``sys.path`` ``had``; the send lock is held.

    ``payloads`` are the tasks' own, taken under the pool's lock as they were
    given to the worker: a task cancelled since drops its payload
    (``_settle_locked``), and reading it here killed the loop thread, and
    with it every task of the pool. (The worker drops the task on the cancel
    that follows.) The tasks of a batch were all submitted under one
    ``sys.path`` (and pins, filters): a task under another goes only to an
    idle worker, first in its batch (``_dispatch``). It goes first where it is
    not the one the worker has.
    """
    tasks, buffers = [], []
    for handle, (function, data, task_buffers, path) in zip(batch, payloads):
        sizes = [memoryview(b).nbytes for b in task_buffers]
        # A timed task's clock starts with the worker's "started" message.
        tasks.append((handle._id, handle.name, function, data, sizes, handle._timeout is not None))
        buffers.extend(task_buffers)  # the payload stays: a crash may send it again
    if _events.listeners:  # before the send: once sent, the result may come back and finish it first
        for handle in batch:
            _events.emit("started", handle)
    if batch and path is not had:
        _send(worker, ("path", _path_message(path)))
    _send(worker, ("tasks", tasks), buffers)


def _enterable() -> bool:
    """Whether a worker forked now could enter this process's working directory, to start there.

    It enters it by its descriptor (``fchdir``), which takes search permission
    there: a program that went into a folder and then took its own search
    permission away (``chmod 0o200``) had its later workers run in the
    template's folder instead, and write their files there. A fresh
    interpreter has the folder from its start, as any program started from
    this one: where it cannot be entered, the worker starts as one.
    """
    return os.access("/proc/self/cwd", os.X_OK, effective_ids=os.access in os.supports_effective_ids)


def _overdue(worker: _Worker) -> bool:
    """Whether busy ``worker`` has returned nothing for ``_OVERDUE`` seconds since its oldest task was sent.

    Tasks sent ahead to a worker wait for the task it runs: sent on the
    strength of the pool's average (short tasks), 20 of 50 waited the whole
    30 s of a long task sent before them, while the other worker had nothing
    to do. Left queued here, they go to whichever worker is idle first (in a
    pool of one, they are sent ahead still: no other worker would take them).
    """
    sent = worker.outstanding[0]._started_at or 0.0
    return time.perf_counter() - max(worker.returned_at, sent) > _OVERDUE


def _exiting(worker: _Worker) -> bool:
    """Whether ``worker`` was told to stop, is set up, and has no task left: it should be exiting now.

    Not one still running its initializer, which reads the stop only after it.
    """
    return (
        worker.leaving and worker.ready and not worker.killing and not worker.outstanding and worker.held is None
    )


def _starting_for_nothing(worker: _Worker) -> bool:
    """Whether ``worker`` was told to stop while still starting, and has no task: all it has left is its initializer.

    Its held tasks went to another worker (:meth:`ProcessBackend._hand_over_held`),
    or back to the queue.
    """
    return (
        worker.leaving and not worker.ready and not worker.killing and not worker.outstanding and worker.held is None
    )


def _filters_now() -> tuple[Sequence[Any], int, Any]:
    """``warnings.filters``, its length and its first entry: what changes when a filter is added.

    ``simplefilter()`` and ``filterwarnings()`` put their entry first, moving
    an equal one there, so the list can change and keep its length
    (``"ignore"``, ``"error"``, then ``"ignore"`` again); the entry put first
    is a new tuple each time.
    """
    filters = warnings.filters
    return filters, len(filters), filters[0] if filters else None


def _message_bytes(handle: AsyncHandle[Any]) -> int:
    """The bytes ``handle`` takes in a worker's pipe: its pickled call, and its name (UTF-8)."""
    function, data, buffers, _ = handle._payload
    name = handle.name
    size = len(function) + len(data) + (len(name) if name.isascii() else len(name.encode("utf-8", "surrogatepass")))
    if buffers:
        size += sum(memoryview(buffer).nbytes for buffer in buffers)
    return size


def _path_message(path: _WorkersPath) -> _WorkersPath:
    """What a worker's ``"path"`` message carries: the parent's ``sys.path`` as it takes it, the pins, the filters."""
    return path_arguments(path[0]), path[1], path[2]


def _send(worker: _Worker, message: tuple[Any, ...], buffers: Sequence[Any] = ()) -> None:
    """Send ``message`` to ``worker`` without waiting: what its pipe has no room for, the loop sends as room comes.

    Its caller holds the worker's send lock, or the worker is not shared yet.
    """
    try:
        sent = worker.conn.send_or_keep(message, buffers)
    except OSError:
        return  # the worker died; the loop sees its pipe close and handles it
    if sent and worker.cancels_unsent:
        _count_cancels_sent(worker)


def _send_control(worker: _Worker, message: tuple[Any, ...]) -> None:
    """Send ``worker`` a control message; a cancel is counted in its journal once it has gone.

    When the count moves, the worker reads its pipe before the next task of
    its inbox (``cancels_sent``), and starts that task if no cancel is
    there: counted as it was kept behind part of a large message, a cancel
    let a worker start 9 of 10 tasks cancelled behind that message.
    """
    with worker.send_lock:
        if message[0] == "cancel":
            worker.cancels_unsent += 1  # counted once it and what waits before it have gone (_send, _flush)
        _send(worker, message, [])


def _flush(worker: _Worker) -> None:
    """Send ``worker`` what waits unsent, as its pipe has room (the loop saw some); count the cancels among it once gone."""
    with worker.send_lock:
        try:
            sent = worker.conn.flush()
        except OSError:
            return  # as in _send
        if sent and worker.cancels_unsent:
            _count_cancels_sent(worker)


def _count_cancels_sent(worker: _Worker) -> None:
    """Count in ``worker``'s journal the cancels that waited to go, now gone; its send lock is held."""
    while worker.cancels_unsent:
        worker.cancels_unsent -= 1
        worker.journal.cancel_sent()


def _watch_writes(selector: selectors.BaseSelector, workers: list[_Worker]) -> None:
    """Have ``selector`` tell when the pipe of each of ``workers`` with messages waiting to go has room; only those."""
    for worker in workers:
        unsent = worker.conn.unsent
        if unsent is not worker.writing:
            try:
                events = selectors.EVENT_READ | selectors.EVENT_WRITE if unsent else selectors.EVENT_READ
                selector.modify(worker.conn, events, worker)
            except (KeyError, ValueError):  # its pipe was closed: nothing waits to go
                continue
            worker.writing = unsent


def _warn(message: str, *args: Any) -> None:
    """Log a warning from the loop thread; where it cannot be written, not at all.

    With no logging set up and ``sys.stderr`` closed, logging's last resort
    raises ``ValueError``, and the loop thread died of its own warning.
    """
    try:
        _log.warning(message, *args)
    except Exception:
        pass


def _initializer_error(sent: tuple[bytes, str, str]) -> BaseException:
    """The error a worker's initializer raised, with the worker's traceback below it, from what the worker sent.

    ``sent``: the error pickled, its traceback as text, and its ``Type:
    message`` (``_process_worker._failure_sent``). One that cannot be unpickled
    here (a class only the worker imports) is a ``TaskSerializationError``
    that says what it was and why, the worker's traceback below it too.
    """
    data, remote_traceback, raised = sent
    error: BaseException
    try:
        error = _serialization.loads(data, [])
    except BaseException as unreadable:  # unpickling runs the user's code: nothing may end the loop
        error = TaskSerializationError(
            f"the error the worker initializer raised ({raised}) came back but could not be unpickled here: "
            f"{described(unreadable)}"
        )
    attach_remote_traceback(error, remote_traceback)  # where it was raised: its whole chain, as the worker printed it
    return error


def _emit_log(
    attributes: dict[str, Any],
    extras: dict[str, tuple[bytes | None, str]],
    metadata: dict[str, tuple[bytes | None, str]] | None = None,
) -> None:
    """Emit a record a worker logged (``_worker_logging``) through this process's logger of its name.

    Its level is named as here (``logging.addLevelName``: ``"WARN"``, a
    ``NOTICE`` of 25), where this process names it. Each ``extra`` is
    unpickled alone: one that cannot be (a class only the worker imports, or
    only pickled there) is its text, ``str()`` of it in the worker. So is each
    value of ``metadata``, the metadata of a task submitted in the worker
    (``None``: the record's ``task_metadata`` is already set, or an extra).
    """
    for name, packed in extras.items():
        attributes[name] = _unpacked(packed)
    if metadata is not None:
        attributes["task_metadata"] = {key: _unpacked(packed) for key, packed in metadata.items()}
    level = attributes["levelno"]
    named = logging.getLevelName(level)
    if named != f"Level {level}":
        attributes["levelname"] = named
    logger = logging.getLogger(attributes["name"])
    if not logger.isEnabledFor(level):
        return
    try:
        # Made by this process's record factory with the record's own name, level and
        # place, as a record logged here is (logging.makeLogRecord gives it None: a
        # factory that read record.name raised), then given the worker's attributes.
        record = logging.getLogRecordFactory()(
            attributes["name"], level, attributes.get("pathname"), attributes.get("lineno"), attributes.get("msg"),
            None, None, attributes.get("funcName"), attributes.get("stack_info"),
        )
        record.__dict__.update(attributes)
        logger.handle(record)
    except BaseException:
        # A factory or a handler is the user's code: whatever it raises must not end
        # the loop. Reported the way logging reports its own handler errors, since
        # logging it again could raise again; to a stderr that fails too, not at all
        # (its OSError read as the worker's pipe breaking, and the worker was killed).
        try:
            traceback.print_exc()
        except BaseException:
            pass


_DELIVERED = frozenset({"output", "log"})  # the messages the Delivery's thread acts on
_ENDED = object()  # a worker's pipe's end of file, read behind output not yet delivered

_alive: weakref.WeakSet[ProcessBackend] = weakref.WeakSet()


def _unpacked(packed: tuple[bytes | None, str]) -> Any:
    """A value a worker packed for a record (``_worker_logging._packed``): unpickled, or its text if it cannot be."""
    data, text = packed
    try:
        return text if data is None else _serialization.loads(data, [])
    except BaseException:  # unpickling runs the user's code: nothing may end the loop
        return text


def _drop_pipes_after_fork() -> None:
    """In a forked child, close this process's ends of the workers' pipes, and refuse tasks.

    Kept open, they would keep every worker alive after this process dies, for as
    long as the child lives (a web server's forked workers, a fork-based pool).
    The pool is the parent's: it is shut down here (an ``Executor`` the parent
    made refuses tasks in the child), and nothing writes to its closed wake-up
    pipe, whose number the child may have reused for a file of its own. Its
    tasks are the parent's too: it holds none here, so that shutting it down
    (leaving the ``Executor``'s ``with`` block) does not wait for them.
    """
    for backend in list(_alive):
        for worker in backend._workers:
            worker.conn.close()
            worker.journal.close()
        if backend._template is not None:
            backend._template.sock.close()  # not its parent: only the socket is ours to drop
        backend._close_wake_pipe()  # now, and never again: the numbers may be reused here
        backend._woken = True  # so _wake() never writes
        backend._closed = True
        backend._workers = []
        backend._template = None
        backend._lock = threading.Lock()  # another thread of the parent may have held it
        backend._drop_queues_after_fork()
        backend._active = 0
    _alive.clear()


def _close_all(close: Callable[[int], None], *fds: int) -> None:
    """Close each of ``fds`` with ``close`` (``os.close``).

    Given, not looked up: as a finalizer this may run as the interpreter
    clears the modules at exit (a pool made as exit waited), after this
    module's ``os`` was set to None.
    """
    for fd in fds:
        try:
            close(fd)
        except OSError:
            pass


_at_fork_in_child(_drop_pipes_after_fork)
