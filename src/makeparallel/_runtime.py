"""The process-wide runtime: backends, configuration, admission limits, shutdown, exit.

Backends are created on first use, one of each kind per process. Configuration
may change at any time and applies to the next submission.

Interpreter exit: the runtime waits for unfinished tasks for at most
``exit_timeout`` seconds (5 by default), and for the code of thread tasks that
timed out or were cancelled as they ran, which goes on on its thread, then lets
the process go and logs how many tasks were abandoned. Worker threads are daemons, so a stuck task can never
hold the process up. Exit does not wait at all when the program already decided:
after :func:`shutdown` (whatever it returned, even interrupted), or when an
uncaught Ctrl-C ends the program (then queued tasks are cancelled).
"""

from __future__ import annotations

import atexit
import gc
import logging
import math
import os
import sys
import threading
import time
import weakref
from typing import Any, Union

import concurrent.futures
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from types import EllipsisType

from . import _at_fork_in_child, _admission, _deadlines, _interruptible
from ._admission import Limiter, all_limiters
from ._backends._base import Backend, _RetryDue, every_backend, pool_of_this_thread, terminate_all
from ._backends._sync import SyncBackend
from ._process_context import locate_contextvars, set_process_contextvars
from ._states import RETRY_WAIT
from ._task_context import current_task
from ._validation import as_integer, check_count, check_seconds, check_wait_timeout

__all__ = [
    "BACKEND_NAMES",
    "configure",
    "configure_memory_limit",
    "configure_process_pool",
    "configure_thread_pool",
    "get_active_task_count",
    "get_backend",
    "get_process_pool_info",
    "get_thread_pool_info",
    "global_limiter",
    "pool_infos",
    "reset_shutdown",
    "set_max_concurrent_tasks",
    "shutdown",
]

_log = logging.getLogger("makeparallel")
# Seconds a lock that shutdown() takes may stay held before a call on the main thread takes it
# for one held by the code it interrupted (_interrupted_holding_a_lock).
_HELD_BELOW_AFTER = 0.25
# And at least this many looks, a millisecond apart, saw it held on end: a main thread starved of
# the GIL past that time saw another thread's brief hold on both sides of its pause, in a few looks.
_HELD_BELOW_LOOKS = 100
# Seconds a shutdown waits at most, its wait for the tasks and the stop of the worker processes
# over, for the worker threads with no task left (callbacks at most) to end (_end_threads).
_THREADS_END_WITHIN = 1.0


def _thread_backend() -> Backend:
    from ._backends._thread import ThreadBackend  # only when used: a first process task starts sooner

    return ThreadBackend()


def _process_backend() -> Backend:
    """The process backend, made for its first task: on Linux its template process starts first.

    The template's start-up is the longest part of a cold pool's first result;
    started before the backend's modules are imported, the two overlap. Only a
    task does this: configuring or inspecting the pool starts no process.
    """
    if not _shut_down:
        from ._backends._template_start import start_early

        start_early()
    return _idle_process_backend()


def _stop_early_template() -> None:
    """Stop the template a first process task started, if no pool took it (a Ctrl-C came before).

    A Ctrl-C as that task imported the pool's modules, or as the pool was
    made, left the template to no pool, whose stop would end it: it served
    on past the shutdown, a child of the program until its next first
    process task took it. Imports nothing where no process task ran.
    """
    template_start = sys.modules.get("makeparallel._backends._template_start")
    if template_start is not None:
        template_start.stop_early()


def _idle_process_backend() -> Backend:
    from ._backends._process import ProcessBackend  # subprocess, sockets: only when used

    return ProcessBackend()


def _interpreter_backend() -> Backend:
    from ._backends._interpreter import InterpreterBackend  # 3.14+ only, and only when used

    return InterpreterBackend()


def _dask_backend() -> Backend:
    from ._backends._dask import DaskBackend  # imports distributed: only when used

    return DaskBackend(_dask_client)


# The registry of backend names: each factory imports its module on first use,
# so importing the library imports no framework.
_FACTORIES: dict[str, Callable[[], Backend]] = {
    "thread": _thread_backend,
    "process": _process_backend,
    "sync": SyncBackend,
    "interpreter": _interpreter_backend,
    "dask": _dask_backend,
}
BACKEND_NAMES = ("thread", "process", "sync", "auto", "interpreter", "dask")

#: What ``backend=`` accepts: a name, or any ``concurrent.futures.Executor``.
BackendOption = Union[str, concurrent.futures.Executor]
ENV_BACKEND = "MAKEPARALLEL_BACKEND"

_lock = threading.Lock()
_backends: dict[str, Backend] = {}
# The adapter of each executor used as a backend, while anything uses it; keyed by
# id(executor): a live adapter holds its executor, so the id cannot be reused.
_adapters: weakref.WeakValueDictionary[int, Backend] = weakref.WeakValueDictionary()
_dask_client: Any = None  # configure(dask_client=...); else distributed's current client
_default_backend: BackendOption | None = None  # set by configure(); else the environment; else "thread"
_default_instance: Backend | None = None  # the default backend once resolved: the hot path
_default_changed: object = object()  # made anew by each change of the default: see _look_up_default
_exit_timeout = 5.0
_async_cancel = "cooperative"
ASYNC_CANCEL_MODES = ("cooperative", "force")
_shut_down = False
_last_shutdown: ShutdownCall | None = None  # the shutdown that _shut_down stems from: what exit says of it
# The threads whose shutdown is stopping the worker processes now (terminate_all), one entry per shutdown.
_stopping_workers: list[int] = []
_shutdown_ended = threading.Condition(_lock)  # notified as one of them is done
_thread_pool_configured = False  # configure_thread_pool() was called
# What configure_thread_pool() and configure_process_pool() set, as each pool's settings() gave
# it after the call: a forked child makes its pools anew with it (_reset_after_fork), taken from
# _inherited_settings as each is made there.
_pool_settings: dict[str, Any] = {}
_inherited_settings: dict[str, Any] = {}
_exit_hook_registered = False
_exit_collection_registered = False  # _collect_failures_dropped_unread, with the pools' hook or an executor's adapter
_also_at_exit: list[Callable[[], list[Backend]]] = []  # more pools exit stops (stop_at_exit), executors'
_also_reported: list[Callable[[], dict[str, Backend]]] = []  # more pools pool_infos() lists (report_pools), executors'
_after_exit: list[Callable[[], None]] = []  # run at exit once the pools stopped (after_pools_at_exit): exporters' last flush
global_limiter = Limiter(None)


def available_backend_names() -> list[str]:
    """The backend names usable here: ``"interpreter"`` needs Python 3.14+, ``"dask"`` distributed."""
    import importlib.util

    unavailable = set()
    if sys.version_info < (3, 14):
        unavailable.add("interpreter")
    if importlib.util.find_spec("distributed") is None:
        unavailable.add("dask")
    return [name for name in BACKEND_NAMES if name not in unavailable]


# Looked up once: asked of sys on each call, a Python without it (before 3.13) raised and caught an
# AttributeError, 2 us, for each call of a backend="auto" function.
_is_gil_enabled: Callable[[], bool] | None = getattr(sys, "_is_gil_enabled", None)


def free_threaded() -> bool:
    """Whether this interpreter runs Python bytecode in parallel (GIL disabled)."""
    return _is_gil_enabled is not None and not _is_gil_enabled()


def resolve_auto(name: str) -> str:
    """``"auto"``: threads where they run Python in parallel, processes where not."""
    if name != "auto":
        return name
    return "thread" if free_threaded() else "process"


def check_backend_name(name: Any, source: str = "backend") -> str:
    """Validate a backend name; the message lists the accepted ones."""
    if name not in BACKEND_NAMES:
        accepted = ", ".join(repr(n) for n in BACKEND_NAMES)
        raise ValueError(f"{source} must be one of {accepted}, got {name!r}")
    return name  # type: ignore[no-any-return]


def check_backend(value: Any, source: str = "backend") -> BackendOption:
    """Validate a ``backend=`` option: a backend name or a ``concurrent.futures.Executor``."""
    if isinstance(value, concurrent.futures.Executor):
        return value
    if isinstance(value, str):
        if value == "interpreter":
            from ._backends._interpreter import check_available

            check_available()  # at the call that names it, not at the first task
        elif value == "dask":
            _check_dask_available()  # as for the interpreter pool: not at the first task
        return check_backend_name(value, source)
    accepted = ", ".join(repr(n) for n in BACKEND_NAMES)
    raise TypeError(
        f"{source} must be a backend name ({accepted}) or a concurrent.futures.Executor, "
        f"got {value!r} of type {type(value).__name__}{_dask_client_advice(value)}{_executor_class_advice(value)}"
    )


def _executor_class_advice(value: Any) -> str:
    """What to do with ``value`` if it is an executor's class, which ``backend=`` takes an instance of."""
    if not (isinstance(value, type) and issubclass(value, concurrent.futures.Executor)):
        return ""
    if value is concurrent.futures.Executor:  # Executor(max_workers=...) is a TypeError; Executor() runs nothing
        return (
            "; that is the base class of executors: pass an executor made from one of its subclasses, "
            "ThreadPoolExecutor(max_workers=...) say"
        )
    # The call shown is one the class takes: a cluster client's executor takes no max_workers.
    import inspect

    try:
        takes_max_workers = "max_workers" in inspect.signature(value).parameters
    except (TypeError, ValueError):  # a signature inspect cannot read: no argument named
        takes_max_workers = False
    arguments = "max_workers=..." if takes_max_workers else "..."
    return f"; that is the class: pass an executor made from it, {value.__name__}({arguments})"


def _dask_client_advice(value: Any) -> str:
    """What to do with ``value`` if it is a Dask client, which users pass as ``backend=``: no Executor, it is refused."""
    distributed = sys.modules.get("distributed")  # imported already if value is a Client: never imported here
    if distributed is None or not isinstance(value, distributed.Client):
        return ""
    return "; for a Dask client, pass backend='dask' and makeparallel.configure(dask_client=client)"


def _check_dask_available() -> None:
    """Raise the ``ImportError`` naming the extra, as the Dask backend's module does, where distributed is missing.

    Looked up, not imported: naming the backend does not load Dask, its first task does.
    """
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        raise ImportError('backend="dask" needs the distributed package: pip install "makeparallel[dask]"')


def default_backend() -> BackendOption:
    """The backend used when none is named: configure(), then the environment.

    The environment variable is read when the default backend is first needed
    (once, while it stays the default: the hot path keeps the backend found).

    Raises:
        ValueError: ``MAKEPARALLEL_BACKEND`` names no backend, or one this
            Python cannot run (``"interpreter"`` before Python 3.14, ``"dask"``
            without distributed).
    """
    if _default_backend is not None:
        return _default_backend
    from_env = os.environ.get(ENV_BACKEND)
    if from_env:
        return _backend_from_environment(from_env)
    return "thread"


def _backend_from_environment(name: str) -> str:
    """``MAKEPARALLEL_BACKEND``, checked as ``backend=`` is, with an error that names the variable.

    Checked by name only, ``interpreter`` on Python 3.11 passed, and every call
    of a function that names no backend failed with "backend='interpreter'
    needs...", an argument its code never passed.
    """
    source = f"the environment variable {ENV_BACKEND}"
    check_backend_name(name, source)
    try:
        check_backend(name, source)
    except (RuntimeError, ImportError) as error:
        usable = ", ".join(repr(each) for each in available_backend_names())
        raise ValueError(
            f"{source} names a backend this Python cannot run: {error}; set it to one of {usable}, or unset it"
        ) from None
    return name


def default_backend_name() -> str:
    """The name of :func:`default_backend`; an executor is described by its type."""
    backend = default_backend()
    return backend if isinstance(backend, str) else f"executor {type(backend).__qualname__}"


def get_backend(name: BackendOption | Backend | None = None) -> Backend:
    """The backend for ``name`` (the default one if ``None``), started on first use.

    A name gives one of the library's backends; an executor, its adapter; a
    backend, itself.
    """
    if name is None:
        backend = _default_instance  # read once: a change of the default may clear it meanwhile
        return backend if backend is not None else _look_up_default()
    if isinstance(name, str):
        backend = _backends.get(name)
        if backend is None:
            # "auto" is kept under the name it means now: created again for each call, it took
            # the runtime lock each time (which a signal handler's call could wait for).
            name = resolve_auto(name)
            backend = _backends.get(name)
        return backend if backend is not None else _create(name)
    if isinstance(name, Backend):
        return name
    return _adapter_for(name)


def _look_up_default() -> Backend:
    """The default backend, looked up afresh and kept for the next calls, unless it changed meanwhile.

    A change of the default (``configure(backend=...)``, ``testing.inline()``)
    that lands while another thread looks it up must win. Kept regardless,
    the backend that thread had found stayed the default of every later call,
    and the change was lost. So a lookup that a change overtook keeps nothing,
    and the next call looks up again. No lock: ``configure(backend=...)`` may
    be called from a signal handler, which a lock held by the thread it
    interrupted would hang. A change writes the setting, then a new token,
    then clears the kept backend; a lookup reads the token, then the setting,
    keeps what it found, then compares the token: a change made after its
    reading of the setting either clears what it kept or shows it a new token.
    """
    global _default_instance
    changed = _default_changed
    backend = get_backend(default_backend())
    _default_instance = backend
    if _default_changed is not changed:
        _default_instance = None
    return backend


def _adapter_for(executor: concurrent.futures.Executor) -> Backend:
    """The backend that runs tasks on ``executor``: one adapter per executor."""
    adapter = _adapters.get(id(executor))
    if adapter is not None:
        return adapter
    from ._backends._adapter import ExecutorBackend

    with _lock:
        adapter = _adapters.get(id(executor))
        if adapter is None:
            adapter = ExecutorBackend(executor)
            if _shut_down:
                adapter.close(cancel_pending=False)
            _adapters[id(executor)] = adapter
            _register_exit_collection_locked()  # its tasks run inline on the executor's threads: in cycles once failed
        return adapter


def _all_backends() -> list[Backend]:
    """Every backend started so far, executors' adapters included."""
    return [*_backends.values(), *_adapters_now().values()]


def _adapters_now() -> dict[int, Backend]:
    """The executors' adapters alive, by id of their executor.

    Listed from their weak references, copied in one C call (``valuerefs()``):
    iterated in Python, an adapter made meanwhile on another thread (an
    executor's first task) raised out of ``health()``, the task count, or
    ``shutdown()``'s wait, its pools closed and their workers not stopped.
    """
    adapters: dict[int, Backend] = {}
    for ref in _adapters.valuerefs():
        adapter = ref()
        if adapter is not None:
            adapters[ref.key] = adapter
    return adapters


def _create(name: str, factory: Callable[[], Backend] | None = None) -> Backend:
    with _lock:
        backend = _backends.get(name)
        if backend is None:
            backend = (factory or _FACTORIES[name])()
            if _shut_down:
                backend.close(cancel_pending=False)
            settings = _inherited_settings.pop(name, None)
            if settings is not None:  # in a forked child: the parent's configuration, as it had it
                backend.restore(settings)  # (once closed: a sizer's thread then starts at the reset)
            _backends[name] = backend
            follow_memory_pause(backend)  # listed first: see there
        _register_exit_hook_locked()
        return backend


def _register_exit_hook_locked() -> None:
    global _exit_hook_registered
    if not _exit_hook_registered:
        _register_exit_collection_locked()  # first: atexit runs the last registered first, this after _at_exit
        atexit.register(_at_exit)
        _exit_hook_registered = True


def _register_exit_collection_locked() -> None:
    """Have exit run :func:`_collect_failures_dropped_unread`, once: after the pools' exit hook, where there is one.

    A program whose tasks run only on executors it gave as ``backend=`` has no
    pools' hook: the executors wait for their tasks themselves, before any exit
    hook (``threading``'s own exit), and their adapters register this alone.
    """
    global _exit_collection_registered
    if not _exit_collection_registered:
        atexit.register(_collect_failures_dropped_unread)
        _exit_collection_registered = True


def stop_at_exit(pools: Callable[[], list[Backend]]) -> None:
    """Have interpreter exit wait for the tasks of ``pools()`` too (an ``Executor``'s), then stop their workers.

    As for the runtime's own pools: for ``configure(exit_timeout=...)`` at
    most, or not at all after Ctrl-C, which cancels what has not started. The
    standard executors run every task submitted before exit, also after
    ``shutdown(wait=False)``: an ``Executor`` left to exit lost its tasks.
    """
    with _lock:
        if pools not in _also_at_exit:
            _also_at_exit.append(pools)
        _register_exit_hook_locked()


def after_pools_at_exit(hook: Callable[[], None]) -> None:
    """Run ``hook`` at interpreter exit once the pools have waited for their tasks and stopped.

    For an exporter's last flush: run before that wait (an ``atexit`` hook
    registered after the first pool's runs before it), it missed the tasks
    that ended in it. ``hook`` is registered with ``atexit`` itself where no
    pool's exit hook is yet (it then runs after that one, registered later).
    A Ctrl-C as it runs skips the hooks left (:func:`_run_after_exit_hooks`).
    """
    with _lock:
        if hook in _after_exit:
            return
        _after_exit.append(hook)
        if not _exit_hook_registered:
            atexit.register(_run_after_exit_hooks, [hook])


def forget_after_exit(hook: Callable[[], None]) -> None:
    """Take back ``hook`` from :func:`after_pools_at_exit`: it will not run at exit."""
    with _lock:
        if hook in _after_exit:
            _after_exit.remove(hook)


def report_error_ending_exit_wait(error: BaseException, wait: str) -> None:
    """Log ``error``, which ended ``wait`` at interpreter exit, once, with its traceback; not Ctrl-C nor ``SystemExit``.

    Those two end a wait at exit as they are meant to, and the warning of the
    tasks abandoned names them. Another is a signal handler's own exception
    (a service whose SIGTERM handler raises one of its own), or a fault: left
    to go up through the exit hook, Python printed it as ignored, among the
    library's frames, and the hook's rest was skipped (the workers' stop,
    the exporters' last flush).
    """
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        return
    _log.error(
        "makeparallel: %s at interpreter exit was ended by %s, raised in it (by a signal handler, where the "
        "traceback ends in one); exit goes on",
        wait, _short_error(error), exc_info=error,
    )


def _short_error(error: BaseException) -> str:
    """``error`` as its type and message: ``Terminated: SIGTERM``."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _run_after_exit_hooks(hooks: list[Callable[[], None]]) -> bool:
    """Run ``hooks`` (:func:`_run_after_exit`); return whether a Ctrl-C (or a signal handler's ``SystemExit``) did not end the run.

    Ctrl-C as a flush is waited for: the user will not wait for the others
    either, which are skipped, those ``atexit`` calls itself too. The error
    would only be printed as ignored, with its traceback: where no pool was
    made, ``atexit`` ran the hooks, and the next exporter's flush was waited
    for still.
    """
    try:
        for hook in hooks:
            _run_after_exit(hook)
    except (KeyboardInterrupt, SystemExit):  # (SystemExit: a signal handler's, SIGTERM)
        with _lock:
            _after_exit.clear()
        return False
    return True


def _run_after_exit(hook: Callable[[], None]) -> None:
    """Run ``hook`` once, unless taken back; the others' run goes on whatever it raises but Ctrl-C or ``SystemExit``.

    Those two end the run (:func:`_run_after_exit_hooks`). Another error that
    is no ``Exception`` (a signal handler's own, as the flush waited on the
    network) is logged once, as it is where it ends a wait at exit
    (:func:`report_error_ending_exit_wait`): it went up through the exit
    hook, printed as ignored, and the flushes after it were skipped.
    """
    with _lock:
        if hook not in _after_exit:
            return
        _after_exit.remove(hook)
    try:
        hook()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception:
        _log.exception("an exit hook of makeparallel failed: %r", hook)
    except BaseException as error:  # noqa: BLE001  # logged there
        report_error_ending_exit_wait(error, f"the exit hook {hook!r}")


def report_pools(pools: Callable[[], dict[str, Backend]]) -> None:
    """Have :func:`pool_infos` (``health()``, the pool gauges) list the pools ``pools()`` gives, by name.

    Those are the own pools of ``mp.Executor`` instances, which no backend name reaches.
    """
    with _lock:
        if pools not in _also_reported:
            _also_reported.append(pools)


def use_default_backend(name: BackendOption | None) -> None:
    """Make ``name`` the default backend; ``None`` goes back to the environment's."""
    global _default_backend, _default_instance, _default_changed
    _default_backend = name
    _default_changed = object()  # in this order: see _look_up_default
    _default_instance = None


def check_async_cancel(mode: Any) -> str:
    """``"cooperative"`` or ``"force"``; the message lists both."""
    if mode not in ASYNC_CANCEL_MODES:
        raise ValueError(f"async_cancel must be 'cooperative' or 'force', got {mode!r}")
    return mode  # type: ignore[no-any-return]


def async_cancel_mode() -> str:
    """What cancelling an ``await`` of a handle does to the task, for functions that say nothing."""
    return _async_cancel


def configure(
    *,
    backend: BackendOption | None = None,
    exit_timeout: float | None = None,
    async_cancel: str | None = None,
    process_contextvars: Iterable[ContextVar[Any]] | None = None,
    dask_client: Any = None,
) -> None:
    """Set process-wide defaults.

    Args:
        backend: the backend for functions that name none: ``"thread"`` (the
            default), ``"process"``, ``"auto"`` (threads on a free-threaded
            Python, processes otherwise), ``"sync"``, ``"interpreter"``
            (Python 3.14+), ``"dask"`` (a Dask cluster, see ``dask_client``),
            or any ``concurrent.futures.Executor``. Overrides the
            ``MAKEPARALLEL_BACKEND`` environment variable.
        exit_timeout: the longest, in seconds, that interpreter exit waits for
            unfinished tasks (and for the code of thread tasks that timed out
            or were cancelled as they ran, which goes on on its thread) before
            abandoning them (default 5; ``math.inf``
            for no limit, as ``None`` leaves the setting as it is). Exit does not
            wait after :func:`shutdown`, nor when an uncaught Ctrl-C ends the
            program.
        async_cancel: what cancelling the coroutine that awaits a handle does
            to the task: ``"cooperative"`` (the default: ``handle.cancel()``, a
            queued task never runs, a running one's ``check_cancelled()`` raises)
            or ``"force"`` (``handle.cancel(force=True)``: on the process backend
            the worker running it is stopped and replaced). A function's own
            ``@parallel(async_cancel=...)`` wins.
        process_contextvars: context variables whose values, as the submitter
            sees them, are set in the worker process before each process task
            runs (threads see the submitter's whole context anyway). Each must be
            a global of an importable module (not ``__main__``), so that a worker
            finds the same variable; values must be picklable. ``[]`` sends none
            again; none are sent by default, at no cost.
        dask_client: the ``distributed.Client`` that ``backend="dask"`` submits
            to; without one, the current client (``distributed.get_client()``)
            at each submission.

    Raises:
        ValueError: a value is out of range, or a context variable is not found
            as a module global.
        TypeError: a value has the wrong type (``backend`` neither a name nor
            an executor, ``dask_client`` not a ``distributed.Client``).
        RuntimeError: ``backend="interpreter"`` before Python 3.14; or
            ``dask_client`` given from a signal handler that interrupted the
            main thread as it held the Dask pool's lock (a task's submission):
            raised within 0.25 s, where the call waited for good; nothing is
            changed (the other settings take no lock).
        ImportError: ``backend="dask"`` where the distributed package is not
            installed (``pip install "makeparallel[dask]"``).
    """
    global _exit_timeout, _async_cancel, _dask_client
    if backend is not None:
        check_backend(backend)
    if exit_timeout is not None:
        exit_timeout = check_seconds(exit_timeout, "exit_timeout")  # None leaves it: math.inf waits for good
    if async_cancel is not None:
        check_async_cancel(async_cancel)
    if process_contextvars is not None:
        located = locate_contextvars(process_contextvars)
    if dask_client is not None:
        _check_dask_client(dask_client)
        _refuse_configuring_in_a_handler("configure(dask_client=...)", lambda: _lock_of(_backends.get("dask")))
    if backend is not None:
        use_default_backend(backend)
    if exit_timeout is not None:
        _exit_timeout = exit_timeout
    if async_cancel is not None:
        _async_cancel = async_cancel
    if process_contextvars is not None:
        set_process_contextvars(located)
    if dask_client is not None:
        _dask_client = dask_client
        dask = _backends.get("dask")
        if dask is not None:
            dask.use_client(dask_client)  # type: ignore[attr-defined]


def _check_dask_client(client: Any) -> None:
    distributed = sys.modules.get("distributed")  # a client exists only if it was imported
    if distributed is None or not isinstance(client, distributed.Client):
        raise TypeError(f"dask_client must be a distributed.Client, got {client!r}")


def configure_thread_pool(
    num_threads: int | str | None | EllipsisType = ..., stack_size: int | None | EllipsisType = ...
) -> None:
    """Size the thread pool, before or after it started.

    Args:
        num_threads: worker threads (an int >= 1); ``None`` for the cores this
            process may use (the size a pool starts with); not given, the size
            is kept. Resizing a running pool is safe: a larger pool starts
            threads for queued work at once, a smaller one retires idle threads.
            ``"auto"``: start at the usable cores and add threads, up to 64,
            while tasks are queued and the running ones partly wait rather than
            compute; idle threads retire after 30 s (see ``benchmarks/adaptive_threads.py``).
            An int or ``None`` goes back to a fixed size.
        stack_size: bytes of stack for threads started from now on (at least
            32 KiB), or ``None`` for the platform default; not given, the
            stack size is kept. Threads already running keep theirs. A thread
            is started with it, and joined, to check that the system gives one
            that much: what memory, overcommit and ``RLIMIT_AS`` allow bounds it.

    Raises:
        TypeError, ValueError: ``num_threads`` or ``stack_size`` is not valid;
            ``ValueError`` too where no thread could start with ``stack_size``
            (the system's ``RuntimeError`` as its ``__cause__``). Either way
            the pool is left as it was.
        RuntimeError: the system refused a new thread (``can't start new
            thread``: a full pids cgroup, ``ulimit -u``); the pool keeps the
            threads it has. With ``num_threads="auto"``, where the sampling
            thread could not start, the pool keeps its size, fixed. A task submitted to the pool raises it the same way,
            and is withdrawn. Also, from a signal handler that interrupted the
            main thread as it held the pool's lock (a task's submission), or
            the library's or the memory limit's with no thread pool made yet:
            raised within 0.25 s, where the call waited for good; nothing is
            changed.
    """
    from ._backends._thread import ThreadBackend, default_thread_count

    global _thread_pool_configured
    _refuse_configuring_in_a_handler("configure_thread_pool()", lambda: _locks_to_reach_pool("thread"))
    by_cores = num_threads is None
    if num_threads is None:  # what the README shows ends "auto": a fixed size, the usable cores
        num_threads = default_thread_count()
    backend = get_backend("thread")
    assert isinstance(backend, ThreadBackend)
    backend.configure(None if num_threads is ... else num_threads, stack_size)
    size: int | str | None
    size, stack = backend.settings()
    if size != "auto" and (by_cores or (num_threads is ... and _size_left_by_cores("thread"))):
        size = None  # the cores of the process that makes the pool: a forked child's own (restore() keeps it)
    _pool_settings["thread"] = (size, stack)
    _thread_pool_configured = True


def _size_left_by_cores(name: str) -> bool:
    """Whether pool ``name``'s size, as configured so far, is the cores of the process that makes it.

    So it is recorded for a forked child (``_pool_settings``): the child's
    own cores, not the parent's count, where a server pins each worker it
    forks to fewer CPUs (uWSGI's ``cpu-affinity``).
    """
    recorded = _pool_settings.get(name)
    return recorded is None or recorded[0] is None


def configure_process_pool(
    num_workers: int | None = None,
    *,
    initializer: Callable[..., object] | None | EllipsisType = ...,
    initargs: Iterable[Any] | EllipsisType = ...,
    max_tasks_per_child: int | None | EllipsisType = ...,
    max_worker_memory: int | str | None | EllipsisType = ...,
    prestart: bool = False,
) -> None:
    """Size and set up the process pool, before or after it started.

    Options not given keep their current value. Any call also lets a pool that
    stopped starting workers (its initializer kept failing) start them again.

    Args:
        num_workers: worker processes (an int >= 1); defaults to the cores this
            process may use. A larger pool starts workers as work arrives; a
            smaller one sends surplus workers no new task and stops each once
            it is idle (the first to finish is kept). In a larger one, a
            worker started with more BLAS and OpenMP threads than the new size
            gives (``get_process_pool_info()["thread_limits"]``) is replaced
            once it is idle and another worker is ready.
        initializer: called as ``initializer(*initargs)`` once in each worker
            before its first task (load a model, open a connection), and again
            in each replacement worker; ``None`` removes it. A new initializer
            replaces the running workers as they become idle. Functions of an
            importable module share that module's globals with the tasks. A
            ``@parallel`` function (also behind ``functools.partial``) runs its
            plain function there, as a map does;
            an ``async def`` one runs on the worker's event loop, its tasks' too
            (the context variables it sets reach the tasks, as a plain one's do).
        initargs: the initializer's arguments (pickled once, now).
        max_tasks_per_child: replace a worker after it ran this many tasks (an
            int >= 1; the standard library's name), for C extensions that leak;
            ``None`` for never (the default). Lowered below what a running
            worker ran already, that worker is replaced once its tasks end.
            Counted in ``get_process_pool_info()["worker_restart_reasons"]``.
        max_worker_memory: replace a worker whose resident memory (RSS, as
            ``ps`` and the OOM killer count it) is over this many bytes after a
            task ends: an int of bytes, or a string with a unit, binary
            (``"2GiB"``, ``"512MiB"``: powers of 1024) or decimal (``"1.5GB"``,
            ``"500MB"``: powers of 1000); ``None`` for never (the default). A
            task is never stopped for it: the worker finishes the tasks it was
            sent, then a new one takes its place (a map chunk counts as one
            task). The limit covers the whole worker, what the initializer
            loaded included: set it above that, or every worker is replaced
            after every task (a warning says so). Counted in
            ``worker_restart_reasons`` as ``"max_worker_memory"``. For the
            memory of the whole machine or container, see
            :func:`configure_memory_limit`.
        prestart: start the workers now rather than with the first task, so that
            the first request of a service does not wait for them.
            ``get_process_pool_info()["ready_workers"]`` counts those ready.

    Raises:
        TypeError: ``initializer`` is not callable (or is a generator function,
            whose body a call would not run), ``initargs`` not iterable,
            ``max_worker_memory`` neither an int nor a string, or ``prestart``
            not a bool.
        ValueError: a count is not an int >= 1, or ``max_worker_memory`` is
            under one byte or a string that is not a number and a unit.
        TaskSerializationError: the initializer or its arguments cannot be pickled.
        RuntimeError: called from a signal handler that interrupted the main
            thread as it held the pool's lock (a task's submission), or, with
            no process pool made yet, the library's or the memory limit's:
            raised within 0.25 s, where the call waited for good; nothing is
            changed.

    Initializer failures: the tasks sent to a worker whose initializer raised
    fail with ``WorkerCrashedError`` naming the initializer, its exception as
    ``__cause__``. After three such starts in a row, the pool starts no more
    workers and fails new tasks at once, until this function is called again.

    Example::

        mp.configure_process_pool(initializer=load_model, initargs=("small",), prestart=True)
        mp.configure_process_pool(max_worker_memory="2GiB")
    """
    from ._backends._process import ProcessBackend

    if num_workers is not None:
        num_workers = check_count(num_workers, "num_workers")
    if max_tasks_per_child is not None and max_tasks_per_child is not ...:
        max_tasks_per_child = check_count(max_tasks_per_child, "max_tasks_per_child")
    if max_worker_memory is not None and max_worker_memory is not ...:
        from ._byte_sizes import parse_byte_size

        max_worker_memory = parse_byte_size(max_worker_memory, "max_worker_memory")
    if not isinstance(prestart, bool):
        raise TypeError(f"prestart must be a bool, got {prestart!r}")
    setup = _worker_setup(initializer, initargs)
    _refuse_configuring_in_a_handler("configure_process_pool()", lambda: _locks_to_reach_pool("process"))
    backend = _process_pool()
    assert isinstance(backend, ProcessBackend)
    backend.configure(num_workers, setup, max_tasks_per_child, prestart, max_worker_memory)
    size: int | None
    size, *rest = backend.settings()
    if num_workers is None and _size_left_by_cores("process"):
        size = None  # as for the thread pool: a forked child's own cores
    _pool_settings["process"] = (size, *rest)


def _worker_setup(initializer: Any, initargs: Any) -> Any:
    """The pickled initializer, or ``None`` to keep the current one."""
    from ._backends._process import NO_SETUP, WorkerSetup
    from ._serialization import dumps_function
    from .errors import TaskSerializationError

    if initializer is ... and initargs is ...:
        return None
    if initializer is ...:
        raise TypeError("initargs needs an initializer: pass initializer= too")
    if initializer is None:
        return NO_SETUP
    if not callable(initializer):
        raise TypeError(f"initializer must be callable or None, got {initializer!r}")
    if initargs is ...:
        initargs = ()
    try:
        arguments = tuple(initargs)
    except TypeError:
        raise TypeError(f"initargs must be an iterable of arguments, got {initargs!r}") from None
    from ._decorators import _describe, _generator_kind
    from ._executor import _plain_of

    # Not its repr, which the pool info and the errors naming it would carry: a partial's holds
    # every argument bound to it (megabytes for a table), a callable object's its address.
    name = _describe(initializer)
    # A @parallel function runs its plain function, as a map runs it: called, it submitted
    # the initializer to a pool of the worker's own, and the worker's globals stayed unset.
    # So does one behind a partial (the arguments bound there rather than in initargs).
    initializer, _ = _plain_of(initializer)
    kind = _generator_kind(initializer)
    if kind is not None:  # a worker would call it and drop the generator, its body never run
        raise TypeError(
            f"initializer {name} is {'an' if kind.startswith('a') else 'a'} {kind} function: a worker "
            f"would only create the {kind}, and none of its body would run. Make it a plain function "
            "(or async def) that returns once set up; to clean up as a worker ends, use atexit"
        )
    try:
        return WorkerSetup(name, dumps_function(initializer), dumps_function(arguments))
    except Exception as error:
        raise TaskSerializationError(
            f"the initializer {name} or its initargs cannot be sent to the worker processes: "
            f"{type(error).__name__}: {error}. They must be picklable"
        ) from error


def get_process_pool_info() -> dict[str, Any]:
    """The process pool: size, workers live, ready, busy and starting, tasks queued, restarts by reason.

    ``"busy_workers"`` counts the ready workers with tasks; ``"starting_workers"``
    those still starting (forked, their initializer running): the tasks given to
    one are held in this process and have not begun, so it is not busy.
    ``"held_tasks"`` counts those tasks, which ``"queued_tasks"`` (the tasks
    accepted and not begun) counts too, and ``"longest_start_s"`` says for how
    many seconds the worker starting longest has been starting (``None``: none is);
    ``"longest_start_initializer"`` names the initializer that worker runs
    (``None``: none is starting, or it runs none), which is not the pool's
    ``"initializer"`` where a new one replaced the workers as it ran the old one.

    Also the thread-count variables (``OMP_NUM_THREADS`` and the BLAS ones) its
    workers get: ``max(1, usable CPUs // num_workers)`` each, unless they are
    set in this process's environment (with a count in ``OMP_NUM_THREADS``,
    OpenBLAS's, MKL's and numexpr's are left out: those libraries read it). A worker counts in ``"live_workers"``
    until its end is counted in ``"worker_restarts"``: one look sees both.
    ``"restarts_in_window"`` counts the restarts of the last
    ``"restart_window_s"`` seconds that no configuration asked for, and
    ``"restart_reasons_in_window"`` the same by reason.

    Raises:
        RuntimeError: called from a signal handler (one that logs the pools
            on ``SIGUSR1``) that interrupted the main thread as it held the
            pool's lock (a task's submission), or the library's or the
            memory limit's, with no process pool made yet: raised within
            0.25 s, where the read waited for good.
    """
    _refuse_pool_info_in_a_handler("get_process_pool_info()", "process")
    return _process_pool().info()


def _process_pool() -> Backend:
    """The process backend, to configure or inspect it: made if need be, without starting a process."""
    return _backends.get("process") or _create("process", _idle_process_backend)


def get_thread_pool_info() -> dict[str, Any]:
    """The thread pool's size and load: threads live, busy and idle, tasks queued.

    ``"configured"`` says whether :func:`configure_thread_pool` was called (as
    in makeparallel 0.2); ``"num_threads"`` (also ``"current_num_threads"``) is
    the pool's size either way.

    Raises:
        RuntimeError: called from a signal handler (one that logs the pools
            on ``SIGUSR1``) that interrupted the main thread as it held the
            pool's lock (a task's submission), or the library's or the
            memory limit's, with no thread pool made yet: raised within
            0.25 s, where the read waited for good.
    """
    _refuse_pool_info_in_a_handler("get_thread_pool_info()", "thread")
    return {**get_backend("thread").info(), "configured": _thread_pool_configured}


def _refuse_pool_info_in_a_handler(call: str, name: str) -> None:
    """Raise ``RuntimeError`` where reading pool ``name`` would wait for good for a lock held below a signal handler.

    Its ``info()`` takes the pool's lock; a pool not made yet is made under the runtime's.
    """

    refuse_under_a_held_lock(
        call,
        lambda: _locks_to_reach_pool(name),
        "Read it from another thread, or have the handler set a flag and read it from your program's own flow",
    )


def _locks_to_reach_pool(name: str) -> list[Any]:
    """The locks that reading or configuring pool ``name`` takes: its own, or, not made yet, those its making takes."""
    backend = _backends.get(name)
    return locks_making_a_pool_takes() if backend is None else [backend._lock]


def locks_making_a_pool_takes() -> list[Any]:
    """The locks a new pool is made under: the runtime's, which lists it, and the memory limit's.

    The pool follows the memory limit under that one (:func:`follow_memory_pause`).
    """
    return [_lock, *_memory_limit_lock()]


def _memory_limit_lock() -> list[Any]:
    """The lock that the memory limit is replaced under, and that a new pool follows it under, once one was configured."""
    guard = sys.modules.get("makeparallel._memory_guard")  # loaded only once a limit was configured
    return [] if guard is None else [guard._guard_lock]


_CONFIGURE_ELSEWHERE = (
    "Nothing was changed. Configure it from another thread, or have the handler set a flag and configure it "
    "from your program's own flow"
)


def _refuse_configuring_in_a_handler(call: str, locks: Callable[[], Iterable[Any]]) -> None:
    """Raise ``RuntimeError`` where ``call``, a change, would wait for good for one of ``locks()``, held below a signal handler.

    Refused, not deferred: a change made later, in a thread of its own, would
    land after whatever the program did meanwhile (a configuration of its own
    undone), and its errors would reach no caller. See :func:`held_below`.
    """
    refuse_under_a_held_lock(call, locks, _CONFIGURE_ELSEWHERE)


def configure_memory_limit(max_memory_percent: float | None = 80.0) -> None:
    """Start new tasks one at a time while memory in use is over ``max_memory_percent``.

    Memory is this process's budget: its container's (cgroup v2, then v1, the
    limit of its own cgroup and the ones above that is nearest to full), else
    ``RLIMIT_AS``, else the host's. It is read every 100 ms by a daemon thread, never per task.
    Over the limit, each pool (an ``Executor``'s too) keeps one worker taking
    new tasks: queued tasks wait, running ones go on, submissions are still
    accepted, and a task waiting for its children runs them itself, so nested
    work is slowed, never deadlocked. Under it again, the pools resume. ``health()`` is degraded
    meanwhile, and metrics count the pauses.

    Args:
        max_memory_percent: percent of the memory limit, in (0, 100]; ``None``
            turns the throttling off.

    Raises:
        TypeError: not a number or ``None``.
        ValueError: outside (0, 100].
        RuntimeError: called from a signal handler that interrupted the main
            thread as it held the memory limit's lock, or a pool's (a task's
            submission), which pausing or resuming the pools takes: raised
            within 0.25 s, where the call waited for good; nothing is changed.
    """
    from . import _memory_guard

    if max_memory_percent is not None:
        _memory_guard.check_percent(max_memory_percent)  # a bad value says so first, in a handler too
    _refuse_configuring_in_a_handler(
        "configure_memory_limit()", lambda: [*_memory_limit_lock(), *memory_guard_locks(), *_locks_a_pause_takes()]
    )
    _memory_guard.configure_memory_limit(max_memory_percent, _pause_pools)


def _locks_a_pause_takes() -> list[Any]:
    """The locks of the pools that pausing takes: those that pause (threads, processes); the others ignore it."""
    return [backend._lock for backend in every_backend() if type(backend).set_paused is not Backend.set_paused]


def _pause_pools(paused: bool) -> None:
    """Pause or resume every pool: the runtime's, and each ``Executor``'s own, which no backend name reaches."""
    for backend in _every_pool():
        backend.set_paused(paused)


def follow_memory_pause(pool: Backend) -> None:
    """Pause ``pool``, a new one, while the memory limit pauses the pools; it must be listed already.

    Listed where :func:`_pause_pools` finds it, the guard's next pause or
    resume reaches it; see :func:`._memory_guard.follow` for one that comes
    as the pool pauses itself.
    """
    guard = sys.modules.get("makeparallel._memory_guard")
    if guard is not None:
        guard.follow(pool.set_paused)


_NO_LIMIT_GIVEN: Any = object()


def set_max_concurrent_tasks(limit: int | None = _NO_LIMIT_GIVEN, *, max_tasks: int | None = _NO_LIMIT_GIVEN) -> None:
    """Allow at most ``limit`` tasks in flight at once, across all functions.

    A submission over the limit waits until a task ends (backpressure); it is
    never dropped. Submissions from inside a task are never made to wait, so that
    nested parallelism cannot deadlock. Tasks already in flight when the limit is
    first set are not counted.

    Args:
        limit: an int >= 1; ``None`` or ``0`` removes the limit (``0`` means
            "no limit" as in ``queue.Queue(maxsize=0)``).
        max_tasks: makeparallel 0.2's name of ``limit``.

    Raises:
        TypeError: ``limit`` is not an int or ``None``, or was given twice.
        ValueError: ``limit`` is negative. Either error names it as it was
            given: ``limit`` or ``max_tasks``.
        RuntimeError: called from a signal handler that interrupted the main
            thread as it held the limit's lock (a task's submission under the
            limit): raised within 0.25 s, where the call waited for good; the
            limit is not changed.
    """
    name = "limit"
    if max_tasks is not _NO_LIMIT_GIVEN:
        if limit is not _NO_LIMIT_GIVEN:
            raise TypeError("set_max_concurrent_tasks() got both limit and max_tasks=, its 0.2 name")
        limit, name = max_tasks, "max_tasks"
    elif limit is _NO_LIMIT_GIVEN:
        raise TypeError("set_max_concurrent_tasks() needs the limit: an int >= 1, or None for none")
    if limit is not None and as_integer(limit) == 0:  # not 0.0 or False
        limit = None
    if limit is not None:
        try:
            limit = check_count(limit, "limit")
        except (TypeError, ValueError) as error:
            raise type(error)(f"{name} must be an int >= 1, or None or 0 for no limit, got {limit!r}") from None
    # (The admission thread's lock too: a raised limit hands its slots on under both.)
    _refuse_configuring_in_a_handler(
        "set_max_concurrent_tasks()", lambda: [global_limiter._lock, _admission._admitter_lock]
    )
    global_limiter.set_limit(limit)


def pool_infos() -> dict[str, dict[str, Any]]:
    """``info()`` of every backend started so far, by name, and of the pools :func:`report_pools` gives."""
    infos = {name: backend.info() for name, backend in list(_backends.items())}
    for key, adapter in _adapters_now().items():
        infos[f"executor-{key:x}"] = adapter.info()
    for pools in _also_reported.copy():  # one may be added meanwhile
        for name, backend in pools().items():
            infos[name] = backend.info()
    return infos


def queued_by_name() -> dict[str, int]:
    """Tasks not yet started, by function name, across every pool (for metrics).

    The ``Executor``s' pools too: their tasks are measured under the functions'
    names as ``@parallel`` tasks are, and without them those queued read as running.
    And the tasks waiting to retry, whose next attempt has not started: in no
    pool's queue during the wait, they read as running, though their handles
    say otherwise and no worker holds them.
    """
    queued: dict[str, int] = {}
    for backend in _every_pool():
        for name, count in backend.queued_by_name().items():
            queued[name] = queued.get(name, 0) + count
    for due in _deadlines.held():  # a retry's wait is an entry on the deadline heap
        handle = due.handle if isinstance(due, _RetryDue) else None
        if handle is not None and handle._state == RETRY_WAIT:
            name = handle._observer.name
            queued[name] = queued.get(name, 0) + 1
    return queued


def get_active_task_count() -> int:
    """Tasks submitted and not yet ended, across every backend, the ``Executor``'s pools included."""
    return _active(_every_pool())


def wait_until_idle(timeout: float | None = None) -> bool:
    """Block until no task is unfinished, or ``timeout`` seconds pass; return whether idle.

    The tasks of every pool count: the runtime's and those of each
    :class:`~makeparallel.Executor` (its ``submit`` and ``map``), as at
    interpreter exit. Code under test that takes an executor (an
    ``executor=`` argument, ``loop.run_in_executor``) and does not wait for
    its futures is waited for too. (:func:`shutdown` waits for the
    runtime's alone: it leaves an ``Executor`` to its own ``shutdown``.)
    A call on another thread blocked for a slot of a limit (``max_concurrent``,
    :func:`set_max_concurrent_tasks`) and handed one as a task ends is waited
    for too, as at interpreter exit: it makes its task only then, the pools
    idle in between. It returns as the last task ends, when that task's
    callbacks (``on_complete``, a future's ``add_done_callback``) and task
    listeners may still run: what they record needs a wait of its own.

    Args:
        timeout: the longest to wait, in seconds; ``None`` waits as long as it takes.

    Returns:
        Whether every task had ended (``False``: the timeout passed first).

    Raises:
        TypeError, ValueError: ``timeout`` is not a number >= 0 or ``None``.
        RuntimeError: ``timeout`` is ``None`` (or ``math.inf``) where the wait could never end,
            as for :func:`shutdown`: inside a task, in a callback on a thread
            pool's worker, on a process pool's loop thread, or on the thread
            of an event loop that runs a ``"sync"`` task's coroutine (or
            comes to: a task it ran in place there returned one); and in a
            process task's callback (on the pool's loop thread, which reads
            the results) whatever the timeout while that pool has a task
            unfinished, as the wait could see none of them end. Also
            ``timeout`` ``None`` (or ``math.inf``) in a task listener told
            ``"submitted"``: that task is submitted once the listeners return,
            and its slot of a limit is taken meanwhile; and in one told
            ``"retry"`` of a ``"sync"`` task on its caller's thread, which runs
            the next attempt once the listeners return.

    In a ``"submitted"`` listener a finite ``timeout`` runs out (``False``)
    where a limit applies to that task, as inside a task.
    """
    timeout = _checked_wait_for_every_task(_every_pool, timeout)
    if timeout is None or timeout == math.inf:
        bound = "a timeout" if timeout is None else "a finite timeout"
        _refuse_to_wait_in_a_submitted_listener(f"wait_until_idle(timeout={timeout})", bound)
        _refuse_to_wait_where_a_retry_runs_next(f"wait_until_idle(timeout={timeout})", bound)
    return _wait_idle_and_slots_free(_every_pool, timeout)


def _refuse_to_wait_in_a_submitted_listener(call: str, bound: str) -> None:
    """Raise ``RuntimeError`` where this thread tells a task listener ``"submitted"``: a wait for every task (``call``) there waits for good.

    The task is submitted only once the listeners return, and holds its slot
    of a limit (``max_concurrent``, :func:`set_max_concurrent_tasks`) from
    before: the wait for every slot to be free outlived it, for good. Refused
    with no limit too, where the wait would return ``True`` with that task
    about to run: the same listener, the same answer.
    """
    events = sys.modules.get("makeparallel._events")  # not loaded: no listener was ever told
    told = None if events is None else events.submitted_told_here()
    if told is None:
        return
    raise RuntimeError(
        f'{call} called in a task listener told "submitted" of task {told.get_task_id()} ({told.name}), '
        f"which is submitted only once the listeners return: the wait could never see it end. Give it {bound}, "
        "or wait once the call that submitted the task returned"
    )


def _refuse_to_wait_where_a_retry_runs_next(call: str, bound: str) -> None:
    """Raise ``RuntimeError`` where this thread runs the next attempt of a task waiting to retry: a wait for every task (``call``) there waits for good.

    A ``"sync"`` task's caller runs its attempts, and is told its ``"retry"``
    listeners before the wait: the next attempt could only start once the wait
    returned. :func:`shutdown` is not refused there: it ends the tasks waiting
    to retry first, as it ends a pool's.
    """
    retrying = next((task for pool in _every_pool() if (task := pool.retries_here()) is not None), None)
    if retrying is None:
        return
    raise RuntimeError(
        f"{call} called on the thread that runs the next attempt of task {retrying.get_task_id()} "
        f'({retrying.name}), which waits to retry: the "sync" backend runs a task\'s attempts in the call that '
        'submitted it, and tells its "retry" listeners there before the wait, so the wait could never see it '
        f"end. Give it {bound}, or wait once that call returned"
    )


def _wait_for_every_task(pools: Callable[[], list[Backend]], timeout: float | None) -> bool:
    """:func:`shutdown`'s wait for the tasks of ``pools()``: the checks and refusals of :func:`wait_until_idle`, then :func:`_wait_idle`."""
    return _wait_idle(pools, _checked_wait_for_every_task(pools, timeout))


def _checked_wait_for_every_task(pools: Callable[[], list[Backend]], timeout: float | None) -> float | None:
    """``timeout`` checked for a wait for every task of ``pools()``; raises where that wait could never end (:func:`wait_until_idle`)."""
    timeout = check_wait_timeout(timeout)
    if timeout is None or timeout == math.inf:  # math.inf waits as long as None does
        bound = "a timeout" if timeout is None else "a finite timeout"
        _refuse_to_wait_for_good_here(f"wait_until_idle(timeout={timeout})", "", bound, pools)
    else:
        _refuse_to_wait_blind_here(f"wait_until_idle(timeout={timeout:g})", ", and return False", pools)
    return timeout


def _wait_idle(backends: Callable[[], list[Backend]], timeout: float | None) -> bool:
    """Block until the pools ``backends()`` lists are all idle at once, or ``timeout`` seconds pass; return whether idle.

    A task of one pool may submit to another already waited for (a thread
    task's process task, a process pool made meanwhile): one pass over them
    left that task behind, at exit lost without a word. So they are waited
    for again until one pass finds them all idle.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        for backend in backends():  # (each ends the "sync" tasks whose loop closed, also as it waits)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not backend.wait_idle(remaining):
                return False
        if not _active(backends()):  # listed again: one made during the pass counts too
            return True


def _wait_idle_and_slots_free(backends: Callable[[], list[Backend]], timeout: float | None) -> bool:
    """:func:`_wait_idle`, then until no slot of any limit is taken, or ``timeout`` seconds pass; return whether both.

    A call blocked for a slot of a limit is handed one as a task ends, and
    makes its task only then: every pool is idle in between, and a wait for
    the pools alone returned before that task was made (``Limiter.wait_free``).
    Its task may hand its slot on in turn: waited for again until one pass
    finds nothing left.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not _wait_idle(backends, remaining) or not _wait_slots_free(deadline):
            return False
        if not _active(backends()) and not _slots_taken():
            return True


def shutdown(timeout_secs: float | None = 30.0, cancel_pending: bool = False) -> bool:
    """Stop accepting tasks and wait, for at most ``timeout_secs``, for the rest to end.

    It waits within its timeout whatever the tasks do: a stuck task on threads is
    left to its daemon thread. A thread task that timed out or was cancelled as
    it ran has ended, but its code goes on on its thread until it returns
    (threads cannot be stopped): that code is waited for too, as
    ``concurrent.futures`` waits for every running call. Then it stops the worker processes, busy or not:
    told to end, then ``SIGTERM`` and ``SIGKILL`` a second apart, every pool's
    workers together, so about two seconds more at most; a process task that has not ended by
    then, running or queued, fails with ``ShutdownError``. Last, it joins the thread
    pool's workers, for at most one second more: as it returns, none is alive but
    those still running a task's code (one the wait ran out on, or one timed out or
    cancelled as it ran, which a thread cannot be stopped in), and its own thread
    where it is a worker (called from a task or a callback). The idle ones end at
    once; one still in a callback of a task that ended is waited for, unless the
    wait for the tasks ran out (no busy worker is waited for then). Within
    that second it also ends and joins the library's admission thread and, unless a task
    left running still has a timeout to enforce (it then ends with the last
    such task), its deadlines thread; the next use starts them again. A Ctrl-C
    there is raised, as in the wait for the tasks.

    Args:
        timeout_secs: the longest to wait, in seconds; ``None`` waits as long as
            it takes.
        cancel_pending: cancel the tasks that have not started yet.

    Returns:
        Whether every task ended in time, the code of those timed out or
        cancelled as they ran on threads included. ``False`` at once where
        it was called from a signal handler that interrupted the library's
        own work on the main thread (below).

    Raises:
        TypeError, ValueError: ``timeout_secs`` is not ``None`` or a number >= 0,
            or ``cancel_pending`` is not a ``bool``; nothing is shut down then.
        RuntimeError: ``timeout_secs`` is ``None`` (or ``math.inf``) where the
            wait could never end (below); or, whatever the timeout, in a process task's
            callback (on the pool's loop thread, which reads the results) while
            that pool has a task unfinished: the wait could see none of them
            end, and would stop the workers with results unread. Nothing is
            shut down then.

    After it, interpreter exit does not wait for tasks again (not even when this
    returned ``False`` or was interrupted): it abandons what is left at once,
    with a warning that says whether this call timed out, was ended by Ctrl-C,
    or still waited.
    Called from a task or a callback, it waits for that task too, which cannot
    end meanwhile, or for tasks that need the thread the callback holds: give
    it a ``timeout_secs`` there. With ``None`` there it would wait for good, so
    it raises ``RuntimeError`` at once, shutting nothing down; so it does on
    the thread of an event loop that runs the coroutine of a ``"sync"`` task
    (called from a coroutine), in that loop or once it stopped: nothing runs
    the loop while the thread waits. Run the loop until the task ends first.
    A ``"sync"`` task called over its limit from a coroutine runs on its loop's
    thread once it has its slot: this wait, on that thread, runs it in place
    (refused only where that loop stopped).

    Called from a signal handler (``SIGTERM`` in a service) that interrupted
    the main thread as it held one of the library's locks (a task's
    submission), it could never take that lock: it waited for good. There it
    logs a warning, goes on in a thread of its own, which exit waits for
    (a Ctrl-C ends that wait), and returns ``False`` at once. Better: have the
    handler set a flag, or raise ``SystemExit``, and shut down from the
    program's own flow (exit stops the pools).
    """
    return _programs_shutdown().run(timeout_secs, cancel_pending, refuse_none=True)


def _refuse_to_wait_for_good_here(
    call: str = "shutdown(timeout_secs=None)",
    done: str = "; nothing was shut down",
    bound: str = "a timeout_secs",
    pools: Callable[[], list[Backend]] = _all_backends,
) -> None:
    """Raise ``RuntimeError`` on a thread where a wait for every task (``call``) could only wait for good.

    Inside a task (its own end is among those waited for); in a callback on a
    thread pool's worker (the tasks queued behind may need that very worker:
    with one thread, they never started); in a process task's callback, on
    its pool's loop thread (which reads every result the wait needs), or in a
    Dask task's callback, on its client's event loop thread (likewise); on the
    thread of an event loop that runs a ``"sync"`` task's coroutine, in it or
    once it stopped (nothing runs that loop while the thread waits); inside a
    Dask task that this process sent to a worker of its own (an in-process
    cluster). Elsewhere in a Dask task it secedes from the worker's threads
    first, as a wait for tasks of its own does: the tasks it submitted may
    need its thread. ``pools()`` lists the pools the wait is for (a loop
    thread of another reads nothing the wait needs).
    """
    task = current_task()
    pool = pool_of_this_thread()
    sent_from_here = getattr(pool, "sent_from_here", None)  # on a Dask worker's thread (_dask._SecedingPlace)
    if pool is not None and sent_from_here is False:
        pool.worker_blocks()  # it waits for the tasks this task submitted, which may need its thread
        pool = None
    if sent_from_here:
        where = "inside a Dask task that this process sent to a worker of its own (an in-process cluster), whose own end it waits for"
    elif task is not None and hasattr(task, "_backend"):  # (not a worker process's stand-in for the parent's task)
        where = f"inside task {task.get_task_id()} ({task.name}), whose own end it waits for"
    elif pool is not None:
        where = "on a thread pool's worker (a callback), which the tasks queued behind may need"
    elif (reader := _reads_results_here(pools)) is not None:
        raise RuntimeError(reader.wait_for_all_refused_here(call, done, bound))
    else:
        coroutines = sys.modules.get("makeparallel._coroutines")
        held = None if coroutines is None else coroutines.one_only_this_thread_can_end()
        if held is None:
            return
        raise RuntimeError(
            f"{call} called on the thread of the event loop that runs the coroutine of task "
            f'{held.get_task_id()} ({held.name}) (the "sync" backend called from a coroutine), or the '
            "task itself once it has its slot, which nothing runs while this thread waits: it would "
            f"wait for good{done}. Run the loop until "
            "the task ends first: `loop.run_until_complete(handle)`, or `await handle` in a "
            "coroutine that loop runs"
        )
    raise RuntimeError(
        f"{call} called {where}, would wait for good{done}. Give it {bound}, or call it "
        "from your program's own thread"
    )


def _interrupted_holding_a_lock() -> bool:
    """Whether this is the main thread, and a lock a shutdown (or a reset) takes stays held for ``_HELD_BELOW_AFTER`` seconds.

    Then the code that holds it is the code this call interrupted (a signal
    handler's call): another thread holds one of them for microseconds, with
    no wait inside, and the interrupted code cannot go on before this call
    returns. Each lock is read without being taken.
    """
    return held_below(_locks_shutdown_takes)


def _locks_shutdown_takes() -> list[Any]:
    # (The limits listed through their module: a look that takes no lock, no step of the shutdown or reset.)
    locks = [_lock, *(lock for backend in every_backend() for lock in backend.locks_shutdown_takes())]
    return [*locks, *(limiter._lock for limiter in _admission.all_limiters()), DEADLINE_HEAP]


class _DeadlineHeap:
    """The deadline heap's lock, as :func:`held_below` reads a lock: ``locked()``."""

    __slots__ = ()

    @staticmethod
    def locked() -> bool:
        return _deadlines.busy()


DEADLINE_HEAP = _DeadlineHeap()


def held_below(locks: Callable[[], Iterable[Any]]) -> bool:
    """Whether this is the main thread, and one of ``locks()`` stays held for ``_HELD_BELOW_AFTER`` seconds (``_HELD_BELOW_LOOKS`` looks).

    :func:`_interrupted_holding_a_lock` for the locks a call other than a
    shutdown takes (``health()``, the metrics): listed only on the main
    thread, each read without being taken.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    held = list(locks())
    ends = time.monotonic() + _HELD_BELOW_AFTER
    looks = 0
    while any(lock.locked() for lock in held):
        looks += 1
        if looks >= _HELD_BELOW_LOOKS and time.monotonic() >= ends:
            return True
        time.sleep(0.001)
    return False


def pool_locks() -> list[Any]:
    """The lock of every pool alive: what reading a pool's figures (``info()``, its queue, its counts) takes."""
    return [backend._lock for backend in every_backend()]


def _lock_of(backend: Backend | None) -> list[Any]:
    """The lock of ``backend``, where there is one (none: not made, nothing to take)."""
    return [] if backend is None else [backend._lock]


def memory_guard_locks() -> list[Any]:
    """The memory limit's lock, where one is configured: what reading its figures takes."""
    guard = sys.modules.get("makeparallel._memory_guard")  # loaded only once a limit was configured
    current = None if guard is None else guard.current_guard()
    return [] if current is None else [current._lock]


def refuse_under_a_held_lock(call: str, locks: Callable[[], Iterable[Any]], instead: str) -> None:
    """Raise ``RuntimeError`` where ``call`` would wait for good for one of ``locks()``, held by the code a signal handler interrupted.

    Within ``_HELD_BELOW_AFTER`` seconds (:func:`held_below`); ``instead``
    says what to do.
    """
    if held_below(locks):
        raise RuntimeError(
            f"{call} was called from a signal handler that interrupted the main thread as it held a lock of "
            f"makeparallel's (a task's submission, say), which {call} needs: it would wait for good. {instead}"
        )


# The shutdowns and resets a signal handler deferred to a thread of their own (_defer), while
# one may still run: each runs once those before it ended, in the order the handler called them.
_deferred: list[threading.Thread] = []
# Shutdowns called so far (as each is called, deferred or not): a deferred reset that finds one
# called after it skips itself, else it undid that later shutdown (_reset_unless_shut_down_since).
_shutdowns_called = 0


def _defer(call: Callable[[], object], name: str) -> threading.Thread:
    """Run ``call`` in a daemon thread named ``name`` once the calls deferred before it ended.

    Only the main thread defers (a signal handler's call), so the list needs no lock.
    """
    before = [thread for thread in _deferred if thread.is_alive()]

    def in_order() -> None:
        for thread in before:
            thread.join()
        call()

    thread = threading.Thread(target=in_order, name=name, daemon=True)
    _deferred[:] = [*before, thread]
    thread.start()
    return thread


def _deferred_pending() -> bool:
    """Whether a shutdown or reset that a signal handler deferred has not ended yet."""
    return any(thread.is_alive() for thread in _deferred)


def _join_at_exit(thread: threading.Thread) -> None:
    """At exit, wait in slices for a deferred :func:`reset_shutdown` going on in ``thread``; a Ctrl-C ends the wait.

    So does a signal handler's ``SystemExit`` (SIGTERM), or an error of its own
    (logged: :func:`report_error_ending_exit_wait`), as in the other waits at
    exit: it went up through this hook, printed as ignored with the library's frames.
    """
    if ending_on_interrupt():
        return
    try:
        _interruptible.join(thread, None)
    except BaseException as error:  # noqa: BLE001  # logged there, unless Ctrl-C's or SystemExit's
        report_error_ending_exit_wait(error, "the wait for a reset_shutdown() deferred by a signal handler")


def _refuse_to_wait_blind_here(call: str, then: str, pools: Callable[[], list[Backend]] = _all_backends) -> None:
    """Raise ``RuntimeError`` where ``call``, a wait for every task with a timeout, could see no task end.

    On a process pool's loop thread (in a process task's callback), which
    reads every result: the wait ran out its whole timeout, and a shutdown
    then stopped the workers, failing the tasks that had ended, their results
    unread, as still running or not started. A wait there for one task is
    refused with or without a timeout (``AsyncHandle._refuse_to_block_a_loop``).
    ``then`` says what the call would have done once its timeout passed.

    Only while that pool has a task unfinished, as a wait for one task is
    refused only while it is: in the callback of its last task, the wait saw
    every task end (a shutdown on the last result, from its callback).
    ``pools()`` lists the pools the wait is for.
    """
    reader = _reads_results_here(pools)
    if reader is not None and reader.refuses_timed_wait_for_all and reader.active_count():
        raise RuntimeError(reader.timed_wait_for_all_refused_here(call, then))


def _reads_results_here(pools: Callable[[], list[Backend]] = _all_backends) -> Backend | None:
    """The pool of ``pools()`` whose results this thread reads (a process pool's loop thread, a Dask client's event loop thread), if any.

    Listed without the lock (copies taken in C calls): ``shutdown(timeout_secs=None)``
    in a signal handler asks, maybe as the code it interrupted holds the lock.
    """
    backends = pools()
    return next((backend for backend in backends if backend.reads_results_here()), None)


def _programs_shutdown() -> ShutdownCall:
    """A call of :func:`shutdown` by the program itself, as exit's warning names it."""
    return ShutdownCall("makeparallel.shutdown()", "give shutdown() a longer timeout_secs")


_WAITING, _WAITED, _TIMED_OUT, _CTRL_C = "waiting", "waited", "timed out", "Ctrl-C"


class ShutdownCall:
    """One shutdown, and how its wait ended: what exit says of the tasks it abandoned.

    :func:`shutdown` makes one that names itself and its ``timeout_secs``. An
    integration that shuts down for the program (the Flask extension at exit,
    the FastAPI lifespan) makes one that names itself and the setting of its
    timeout, and runs it: exit's warning said "give shutdown() a longer
    timeout_secs", a call and an argument that program never wrote.

    Args:
        by: who shut down, as the warning names it ("makeparallel.shutdown()").
        longer: how to wait longer, as the warning advises it
            ('raise app.config["MAKEPARALLEL_SHUTDOWN_TIMEOUT"]').
    """

    __slots__ = ("by", "ended", "longer", "timeout")

    def __init__(self, by: str, longer: str) -> None:
        self.by = by
        self.longer = longer
        self.timeout: float | None = None
        self.ended = _WAITING

    def run(self, timeout_secs: float | None, cancel_pending: bool, refuse_none: bool = False) -> bool:
        """:func:`shutdown` (same arguments, return value and errors), remembered as this call.

        With ``refuse_none``, ``timeout_secs=None`` is refused where it would
        wait for good (:func:`shutdown`'s rule).
        """
        timeout_secs = check_wait_timeout(timeout_secs, "timeout_secs")
        if not isinstance(cancel_pending, bool):  # "no", a truthy str, would have cancelled them all
            raise TypeError(f"cancel_pending must be a bool, got {cancel_pending!r}")
        self.timeout = timeout_secs
        # First: the refusals below take the runtime's lock, which the code a signal handler interrupted may hold.
        if _interrupted_holding_a_lock():
            _log.warning(
                "%s was called from a signal handler that interrupted the main thread as it held a lock of "
                "makeparallel's: waiting there would wait for good. The shutdown goes on in a thread of its own, "
                "which exit waits for, and the call returns False at once. Have the handler set a flag, or raise "
                "SystemExit, and shut down from your program's own flow",
                self.by,
            )
            _count_shutdown_called()
            thread = _defer(lambda: self._run(timeout_secs, cancel_pending), "makeparallel-shutdown")
            # Registered last, so run first at exit: the pools' hook then finds the shutdown over.
            atexit.register(self._wait_at_exit, thread)
            return False
        if timeout_secs is None and refuse_none:
            _refuse_to_wait_for_good_here()
        elif timeout_secs == math.inf and refuse_none:  # it waits as long as None does
            _refuse_to_wait_for_good_here("shutdown(timeout_secs=inf)", bound="a finite timeout_secs")
        if timeout_secs is not None:
            _refuse_to_wait_blind_here(
                f"shutdown(timeout_secs={timeout_secs:g})",
                ", then stop the worker processes, failing with ShutdownError the tasks whose results "
                "it left unread; nothing was shut down",
            )
        _count_shutdown_called()
        return self._run(timeout_secs, cancel_pending)

    def _run(self, timeout_secs: float | None, cancel_pending: bool) -> bool:
        global _shut_down, _last_shutdown
        with _lock:
            _shut_down = True
            _last_shutdown = self
            backends = _all_backends()
        try:
            for limiter in all_limiters():
                limiter.close()
            for backend in backends:
                backend.close(cancel_pending)
            _reopen_if_reset(backends)  # (a reset came before these: the tasks it lets in are taken as this waits)
            for due in _deadlines.held():  # a closed pool runs no further attempt: end them now
                give_up = getattr(due, "give_up", None)
                if give_up is not None:
                    give_up()
            deadline = None if timeout_secs is None else time.monotonic() + timeout_secs
            finished = _wait_for_every_task(_all_backends, timeout_secs) and _wait_abandoned(backends, deadline)
            try:
                if _begin_stopping_workers():  # (not reset meanwhile: the tasks accepted since must run)
                    terminate_all(backends)  # no worker process outlives shutdown, busy or not; every pool's at once
                    _stop_early_template()  # nor a template no pool took
                    _end_threads(backends, finished)  # nor an idle worker thread
            finally:
                _end_stopping_workers()
        except KeyboardInterrupt:
            self.interrupted()
            raise
        self._end(_WAITED if finished else _TIMED_OUT)
        _reopen_if_reset(backends)
        return finished

    def _wait_at_exit(self, thread: threading.Thread) -> None:
        """At exit, wait for this shutdown going on in ``thread`` (:meth:`run` from a signal handler), in slices.

        A non-daemon thread was waited for by the interpreter in one piece, which
        a Ctrl-C did not end: ``shutdown(None)`` with a task that never ends held
        the exit for good. A Ctrl-C ends this wait as it ends the pools' own, and
        exit abandons what is left saying so, even where the thread had not
        yet marked the library shut down (the pools' hook then waited for the tasks).
        A shutdown already over is left as it is: marked shut down again after a
        :func:`reset_shutdown`, exit abandoned the tasks the program took since.
        """
        global _shut_down, _last_shutdown
        if not thread.is_alive():
            return
        with _lock:
            _shut_down = True
            _last_shutdown = self
        if ending_on_interrupt():  # a Ctrl-C ended the program: the user will not wait
            self.interrupted()
            return
        try:
            _interruptible.join(thread, None)
        except KeyboardInterrupt:
            self.interrupted()
        except BaseException as error:  # noqa: BLE001  # a signal handler's (SIGTERM): exit's warning says this wait had not ended
            report_error_ending_exit_wait(error, f"the wait for {self.by}, deferred by a signal handler")

    def interrupted(self) -> None:
        """A Ctrl-C ended the wait for this shutdown: exit's warning says so, and advises no longer timeout.

        Also for a wait in another thread that goes on (the FastAPI lifespan's:
        its Ctrl-C handler calls this). Safe in a signal handler: it takes no lock.
        """
        self._end(_CTRL_C)

    def _end(self, how: str) -> None:
        # The first end counts: a Ctrl-C that ended the lifespan's wait, not the
        # timeout its thread reaches later. Without a lock (a signal handler calls
        # it): the two ends racing to the same call leave either, both true.
        if self.ended == _WAITING:
            self.ended = how

    def log_abandoned(self, backends: list[Backend]) -> None:
        """Warn that exit abandoned the tasks of ``backends``, left by this shutdown, with the advice that fits its end."""
        if self.ended == _CTRL_C:
            _log_abandoned(backends, f"after Ctrl-C ended {self.by}", _CHECK_CANCELLED_ADVICE)
        elif self.ended == _WAITING:
            # Its wait goes on in another thread (a lifespan cancelled meanwhile), or an
            # error other than Ctrl-C ended it (SystemExit from a signal handler).
            _log_abandoned(backends, f"while {self.by} still waited for them", "the program ended before that wait did")
        else:
            waited = f" waited {self.timeout:g} s" if self.ended == _TIMED_OUT and self.timeout is not None else ""
            _log_abandoned(backends, f"after {self.by}{waited}", f"{self.longer} to wait for them")


def _reopen_if_reset(backends: list[Backend]) -> None:
    """Reopen the limits and ``backends`` that a shutdown closed or stopped after :func:`reset_shutdown` reopened them.

    A reset from another thread while the shutdown still ran came before some of
    its steps: the pools it closed then, or whose workers it was stopping, refused
    every later task with ``ShutdownError``, the library not shut down. So the
    shutdown calls this once it has closed them (else they refused the tasks for
    its whole wait), and as it returns. Under the lock, which the reset reopens
    under too: a shutdown begun since closes them after this.
    """
    with _lock:
        if _shut_down:
            return
        for limiter in all_limiters():
            limiter.reopen()
        for backend in backends:
            backend.reopen()


def reset_shutdown() -> None:
    """Accept tasks again after :func:`shutdown`.

    Called while a shutdown still runs in another thread, it ends that
    shutdown's hold on the pools: the shutdown still waits within its timeout,
    but it stops no worker process, and the tasks accepted from then on run.
    (Called once the shutdown has begun stopping the worker processes, the
    process tasks running then fail with ``ShutdownError``, and the pools take
    tasks again as the shutdown returns.)

    Called from a signal handler that interrupted the main thread as it held
    one of the library's locks (a task's submission), it could never take
    that lock: it waited for good. There, and on the main thread while a
    shutdown or reset that a handler deferred so has not ended, it logs a
    warning and returns at once (within 0.25 s), and the reset goes on in a
    thread of its own once the calls deferred before it ended, in the order
    they were called: ``shutdown()`` then ``reset_shutdown()`` in a handler
    leaves the library open, as the two calls one after the other would.
    A shutdown called after it, before it ran (the program's own, from any
    thread, as the deferred shutdown still waited for the tasks), skips it,
    with a warning: the library stays shut down, as the last call left it.
    Exit waits for that thread (a Ctrl-C ends that wait).
    """
    if _interrupted_holding_a_lock() or (_deferred_pending() and threading.current_thread() is threading.main_thread()):
        _log.warning(
            "makeparallel.reset_shutdown() was called from a signal handler that interrupted the main thread as it "
            "held a lock of makeparallel's, or while a shutdown deferred so had not ended: waiting there could wait "
            "for good. The reset goes on in a thread of its own, after the shutdowns deferred before it, and the "
            "call returns at once"
        )
        called = _shutdowns_called
        # Registered after the shutdown's exit hook, so run before it: that one then finds its shutdown over.
        atexit.register(_join_at_exit, _defer(lambda: _reset_unless_shut_down_since(called), "makeparallel-reset"))
        return
    _reset_now()


def _count_shutdown_called() -> None:
    """Count a shutdown as it is called (no lock: a signal handler calls it; any change tells)."""
    global _shutdowns_called
    _shutdowns_called += 1


def _reset_unless_shut_down_since(called: int) -> None:
    """A deferred :func:`reset_shutdown`: skipped where a shutdown was called after it (``called`` shutdowns before).

    Run once the calls deferred before it ended, maybe long after (a deferred
    shutdown waits for the tasks): a shutdown the program called meanwhile,
    from its own flow, ran first, and the reset reopened the library under it.
    Decided under the lock: a shutdown not counted yet runs after the reset.
    """
    with _lock:
        if _shutdowns_called != called:
            _log.warning(
                "makeparallel.reset_shutdown(), deferred from a signal handler, was skipped: shutdown() was called "
                "after it, before it could run"
            )
            return
        _reset_shutdown_locked()


def _reset_now() -> None:
    # Reopened under the lock, as shutdown() marks the library shut down: reopened
    # after it, a shutdown from another thread in between closed the pools first, and
    # the reset reopened them under it, the library shut down and taking every task.
    with _lock:
        _reset_shutdown_locked()


def _reset_shutdown_locked() -> None:
    """:func:`reset_shutdown`, under the lock."""
    global _shut_down, _last_shutdown
    _shut_down = False
    _last_shutdown = None
    for limiter in all_limiters():
        limiter.reopen()
    for backend in _all_backends():
        backend.reopen()
    _deadlines.keep()


def _begin_stopping_workers() -> bool:
    """Whether a shutdown, its wait over, is to stop the worker processes: not if reset meanwhile.

    Decided under the lock, as :func:`reset_shutdown` reopens: the thread is
    listed until :func:`_end_stopping_workers`, for :func:`reset_shutdown_once_none_stops`.
    """
    with _lock:
        if _shut_down:
            _stopping_workers.append(threading.get_ident())
        return _shut_down


def _end_stopping_workers() -> None:
    """This thread's shutdown stopped the worker processes (or never began to): wake those waiting."""
    with _lock:
        me = threading.get_ident()
        if me in _stopping_workers:  # (not if reset before, or a Ctrl-C came first)
            _stopping_workers.remove(me)
        _shutdown_ended.notify_all()


def shutdown_runs() -> bool:
    """Whether a shutdown in another thread is stopping the worker processes now (:func:`reset_shutdown_once_none_stops`).

    Read from a copy: under the lock, to reset in the same hold, or without it, to look again later.
    """
    me = threading.get_ident()
    return any(ident != me for ident in list(_stopping_workers))


def reset_shutdown_once_none_stops() -> None:
    """:func:`reset_shutdown` once no shutdown in another thread is stopping the worker processes: an integration that reopens.

    A :func:`reset_shutdown` as another thread's shutdown stopped the worker
    processes let it go on under the reopened library, failing the process
    tasks taken meanwhile with ``ShutdownError``. That takes about two seconds
    at most (the workers' grace periods). A shutdown still waiting for its
    tasks is not waited for: reset then, it stops no worker; and waited for,
    it held for good a task of its own that reopened (an app factory called
    in a task, with ``timeout_secs=None``). Nor is one of this thread's (a
    signal handler's call as it ran), which could never end meanwhile.

    The wait and the reset are one hold of the lock, which a shutdown takes
    to begin stopping the workers (:func:`_begin_stopping_workers`): waited
    for and then reset in two, a shutdown that began stopping them in between
    was reset under all the same.
    """
    with _lock:
        while shutdown_runs():
            _shutdown_ended.wait()
        _reset_shutdown_locked()


def reset_shutdown_unless_one_stops() -> bool:
    """:func:`reset_shutdown` unless a shutdown in another thread is stopping the worker processes now; return whether it reset.

    For a caller that cannot block (the FastAPI lifespan, on its event loop),
    which looks again later (:func:`shutdown_runs`). The look and the reset
    are one hold of the lock, as in :func:`reset_shutdown_once_none_stops`.
    """
    with _lock:
        if shutdown_runs():
            return False
        _reset_shutdown_locked()
        return True


def is_shut_down() -> bool:
    """Whether :func:`shutdown` was called and not reset."""
    return _shut_down


def _executor_pools() -> list[Backend]:
    """The pools of the ``Executor``s there now (:func:`stop_at_exit`)."""
    return [pool for pools in _also_at_exit for pool in pools()]


def _every_pool() -> list[Backend]:
    """The runtime's pools and the ``Executor``s', as they are now: a task may make one as exit waits."""
    return [*_all_backends(), *_executor_pools()]


def end_those_of_closed_loops() -> None:
    """End the tasks whose coroutine's loop closed first (exit's count of those left would hold them unfinished)."""
    coroutines = sys.modules.get("makeparallel._coroutines")
    if coroutines is not None:
        coroutines.end_those_of_closed_loops()


def _at_exit() -> None:
    backends = _all_backends()
    end_those_of_closed_loops()  # (before its count of the tasks left, too)
    try:
        reopen = _wait_or_abandon(backends, _executor_pools())
    except BaseException as error:  # noqa: BLE001  # logged there, unless Ctrl-C's or SystemExit's
        # Ctrl-C as exit abandons the tasks (a second one after the Ctrl-C that ended
        # the program, while a large batch is cancelled): the user will not wait, and
        # the error would only be printed as ignored, with the workers not stopped.
        # Likewise a signal handler's SystemExit, or its own error (a second SIGTERM, as the
        # warning of the tasks a first one abandoned is written): it skipped the exporters' flush too.
        report_error_ending_exit_wait(error, "the abandoning of the tasks")
        reopen = False
    # No orphaned or zombie worker process; every pool's stopped at once.
    try:
        terminate_all(_every_pool())
    except BaseException as error:  # noqa: BLE001  # (SystemExit or another error: a signal handler's, as in the wait)
        # Ctrl-C as the workers stop (a second one after the Ctrl-C that ended the
        # program, or one while a worker deaf to SIGTERM takes its two grace periods):
        # the user will not wait. A worker not stopped yet dies with this process (its
        # parent-death signal); the error would only be printed as ignored.
        report_error_ending_exit_wait(error, "the stop of the worker processes")
        reopen = False
    coroutines = sys.modules.get("makeparallel._coroutines")
    if coroutines is not None:  # before finalization, where the daemon workers' loops could not be closed
        coroutines.close_idle_loops()
    if not _run_after_exit_hooks(list(_after_exit)):  # the exporters' last flush: every task counted now
        reopen = False  # Ctrl-C there: the pools are left stopped
    if reopen:
        # The program's exit hooks registered before the first pool run after this one, and
        # may still submit tasks, as on threads: a process pool then starts new workers,
        # which die with the program (their parent-death signal). Left stopped, it failed them.
        for backend in backends:
            backend.reopen()


def _collect_failures_dropped_unread() -> None:
    """At exit, once the tasks ended, collect garbage once where a task failed unread: a handle dropped in a reference cycle logs its error now.

    Left to the interpreter's last collection, such a handle was freed as the
    interpreter finalized, when its finalizer logs nothing (logging may be gone):
    a short script's failed tasks, fired and forgotten, went without a word. Only
    where a task failed unread since the start (``_handle.failed_unread``): a
    program whose tasks all succeeded pays for no collection. It runs after
    :func:`_at_exit`, so a failure that exit's wait saw end is among them.
    """
    handles = sys.modules.get("makeparallel._handle")
    if handles is not None and handles.failed_unread:
        gc.collect()


def _wait_or_abandon(backends: list[Backend], executors: list[Backend]) -> bool:
    """Wait at exit for the tasks of ``backends`` and ``executors``, or abandon them; return whether the pools may reopen.

    They may reopen only after a normal exit that waited, for the exit hooks that run after this one.
    """
    if _shut_down:
        # shutdown() already waited (or was interrupted, or the caller chose its
        # timeout): the program decided, so exit does not wait a second time.
        # (An Executor's tasks, which shutdown() leaves alone, are the program's too.)
        if ending_on_interrupt():
            # As below: what has not started never will. Left queued, the pool's threads
            # went on starting them while the later exit hooks ran, after the user's Ctrl-C.
            for backend in [*backends, *executors]:
                backend.close(cancel_pending=True)
        if _unfinished(backends):
            # (It may not have returned: a Ctrl-C may have cut it short, or it waits on
            # in another thread. The warning says which, and names the setting of its
            # timeout: an integration's, where the program never called shutdown().)
            # (_last_shutdown is set with _shut_down, under the lock: never None here.)
            (_last_shutdown or _programs_shutdown()).log_abandoned(backends)
    elif ending_on_interrupt():
        _abandon_on_interrupt([*backends, *executors])
    else:
        timeout = _exit_timeout
        try:
            idle = not (_unfinished([*backends, *executors]) or _slots_taken()) or _wait_ended(_every_pool, timeout)
        except KeyboardInterrupt:
            # Ctrl-C while exit waited: the user will not wait, and the error would
            # only be printed as ignored, with the workers left running until the end.
            _abandon_on_interrupt(_every_pool())
        except BaseException as error:  # noqa: BLE001  # logged there, unless SystemExit
            # Likewise a signal handler's sys.exit() (SIGTERM from a service manager, as
            # the README advises), or an error of its own: printed as ignored with the
            # library's frames, it also skipped the workers' stop and the exporters' last flush.
            report_error_ending_exit_wait(error, "the wait for the tasks")
            _abandon_on_interrupt(_every_pool(), f"after {type(error).__name__} ended the wait for them")
        else:
            if not idle:
                _log_abandoned(_every_pool(), f"after waiting {timeout:g} s", _advice_after_exit_timeout)
            return True
    return False


def _abandon_on_interrupt(backends: list[Backend], when: str = "after Ctrl-C") -> None:
    """Ctrl-C ended the program, or its wait at exit (or another error did, ``when`` says): what has not started never will."""
    for backend in backends:
        backend.close(cancel_pending=True)
    if _unfinished(backends):
        _log_abandoned(backends, when, _CHECK_CANCELLED_ADVICE)


_CHECK_CANCELLED_ADVICE = "a task stops sooner when it calls makeparallel.check_cancelled()"  # after a Ctrl-C
# Where only the code of tasks that timed out or were cancelled as they ran is left: a plain
# function's, an async function's (its coroutine was cancelled, ThreadBackend.coroutine_stop_hint), both.
_STOP_ON_CANCEL_ADVICE = "a task's code stops at its timeout or cancel only where it calls makeparallel.check_cancelled()"
_COROUTINE_STOP_ADVICE = "an async task's coroutine stops at its timeout or cancel at its next await"
_BOTH_STOP_ADVICE = (
    "a plain task's code stops at its timeout or cancel only where it calls makeparallel.check_cancelled(), "
    "an async task's coroutine at its next await"
)


def _advice_after_exit_timeout(active: int, running: int, coroutines: int) -> str:
    """Exit's advice once its timeout passed, for what its warning counts (:func:`_log_abandoned`).

    ``active`` unfinished tasks; the code of ``running`` ended ones still
    running, ``coroutines`` of them async tasks'. Where only such code runs
    on, collecting or shutting down would not stop it. (``coroutines`` is
    counted by the function's kind, as the task was abandoned and as its
    code returned: a function that returned a coroutine only some of the
    time may leave it off by one, so it is read within ``0..running``.)
    """
    if active or not running:
        advice = "collect results or call makeparallel.shutdown() (Executor.shutdown()) before exiting"
    elif coroutines <= 0:
        advice = _STOP_ON_CANCEL_ADVICE
    elif coroutines >= running:
        advice = _COROUTINE_STOP_ADVICE
    else:
        advice = _BOTH_STOP_ADVICE
    return f"{advice}, or raise configure(exit_timeout=...)"


def ending_on_interrupt() -> bool:
    """Whether the interpreter exits because a ``KeyboardInterrupt`` went uncaught.

    Python stores the exception that ended the program in ``sys.last_value``
    before it runs the exit hooks (3.10 to 3.13 alike). But the interactive
    prompt (``sys.ps1`` is set there, also by ``python -i`` and ``code.interact``)
    stores every error it prints there too, and goes on: a Ctrl-C it caught
    hours before was taken for one that ended the session, whose exit then
    waited for no task.
    """
    return isinstance(getattr(sys, "last_value", None), KeyboardInterrupt) and not hasattr(sys, "ps1")


def _active(backends: list[Backend]) -> int:
    """Tasks submitted to ``backends`` and not yet ended, each once.

    A task that an adapter sent to an ``mp.Executor`` runs in a task of that
    executor's pool, which counts it too: once, where that pool is among
    ``backends`` (``ExecutorBackend.active_count_beside``).
    """
    return sum(backend.active_count_beside(backends) for backend in backends)


def _abandoned_running(backends: list[Backend]) -> int:
    """Tasks of ``backends`` that ended as they ran (timed out, cancelled) and whose code still runs on a thread."""
    return sum(backend.abandoned_running() for backend in backends)


def _abandoned_running_async(backends: list[Backend]) -> int:
    """Of :func:`_abandoned_running`, the async tasks': their coroutine was cancelled, and stops at its next await."""
    return sum(backend.abandoned_running_async() for backend in backends)


def _unfinished(backends: list[Backend]) -> int:
    """Tasks of ``backends`` not yet ended, and those ended whose code still runs on a thread: what exit waits for."""
    return _active(backends) + _abandoned_running(backends)


def _end_threads(backends: list[Backend], finished: bool) -> None:
    """Join the worker threads of ``backends`` that have no task left, and the admission and deadlines threads, for at most ``_THREADS_END_WITHIN`` seconds in all.

    ``finished``: every task ended in the shutdown's wait, and a busy worker is
    in a callback, waited for too; else only the idle ones are.
    """
    deadline = time.monotonic() + _THREADS_END_WITHIN
    try:
        for backend in backends:
            backend.end_threads(max(0.0, deadline - time.monotonic()), finished)
    except BaseException:  # a Ctrl-C in a join: the threads after are still told to end, not waited for
        _end_library_threads(None)
        raise
    _end_library_threads(deadline)


def _end_library_threads(deadline: float | None) -> None:
    """Have the admission and deadlines threads end, each joined until ``deadline`` (monotonic); None: not joined.

    They waited for work for good: the admission thread runs the steps queued,
    and the deadlines thread stays while a task left running has a timeout to
    enforce. The next use starts each again. A Ctrl-C in the first join still
    tells the second to end, without waiting for it.
    """
    try:
        _admission.end_thread(0.0 if deadline is None else max(0.0, deadline - time.monotonic()))
    except BaseException:
        _deadlines.end(0.0)
        raise
    _deadlines.end(0.0 if deadline is None else max(0.0, deadline - time.monotonic()))


def _wait_abandoned(backends: list[Backend], deadline: float | None) -> bool:
    """Block until the code of every task of ``backends`` that ended as it ran returned, or ``deadline`` (monotonic) passes."""
    for backend in backends:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not backend.wait_abandoned(remaining):
            return False
    return True


def _slots_taken() -> int:
    """Slots of every limit taken: by tasks not yet ended, and by calls admitted whose task no pool holds yet.

    A limit that counts below zero has none taken, as its own wait reads it
    (``Limiter.wait_free``): in a child that a ``"sync"`` task forked, the
    task's end frees a slot the child's count never held. Summed, that -1
    read as a slot taken while every wait found none, and exit passed over
    them again for good, whatever its timeout.
    """
    return sum(max(0, limiter.in_flight) for limiter in all_limiters())


def _wait_slots_free(deadline: float | None) -> bool:
    """Block until no slot of any limit is taken, or ``deadline`` (monotonic) passes; return whether none is."""
    for limiter in all_limiters():
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not limiter.wait_free(remaining):
            return False
    return True


def _wait_ended(backends: Callable[[], list[Backend]], timeout: float | None) -> bool:
    """Exit's wait: :func:`_wait_idle`, then for the code of the tasks that ended as they ran, then for the slots of the limits; whether all ended within ``timeout`` seconds.

    A thread task that timed out or was cancelled as it ran goes on on its
    daemon thread, which nothing stops: exit that waited only for the handles
    let the process end in the middle of that code (a file half written).
    A call on a daemon thread handed a slot of a limit as a task ended holds
    it before its task exists: the pools were idle just then, and exit that
    waited only for them lost that task (``Limiter.wait_free``). Either may
    submit tasks (nothing is shut down at exit): waited for again until one
    pass finds nothing left.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if (
            not _wait_idle(backends, remaining)
            or not _wait_abandoned(backends(), deadline)
            or not _wait_slots_free(deadline)
        ):
            return False
        if not _unfinished(backends()) and not _slots_taken():
            return True


def _log_abandoned(
    backends: list[Backend], when: str, advice: str | Callable[[int, int, int], str]
) -> None:
    """Warn that the tasks of ``backends`` were abandoned at exit, with the advice that fits how the program ended.

    Only what is left is named: after a Ctrl-C it read "0 task(s) still
    unfinished and the code of 2 timed out or cancelled task(s) still running".
    Nothing left (it all ended since the caller looked), nothing is said.
    ``advice`` may depend on what is left: a function of the counts read
    here (unfinished tasks, running code of ended ones, of which async
    tasks'), which the warning gives. Chosen from a read of its own, it told
    to collect a task that had timed out since, only its code left.
    """
    active, running = _active(backends), _abandoned_running(backends)
    if not isinstance(advice, str):
        advice = advice(active, running, _abandoned_running_async(backends))
    left = []
    if active:
        left.append(f"{active} task(s) still unfinished")
    if running:
        left.append(f"the code of {running} timed out or cancelled task(s) still running")
    if not left and _slots_taken():  # (exit waited for them: _wait_ended)
        left.append("calls holding a slot of a limit (max_concurrent, set_max_concurrent_tasks), not yet submitted,")
    if left:
        _log.warning("makeparallel: %s at interpreter exit were abandoned %s; %s", " and ".join(left), when, advice)


def _reset_after_fork() -> None:
    """A forked child has none of the parent's threads: start afresh on first use.

    Its pools are made anew, with the configuration the parent gave its own
    (``_pool_settings``): a forking server configures its pools as its app
    loads, then forks its workers, and each ran pools of the default size,
    ``num_threads="auto"`` and the stack size lost, while
    ``get_thread_pool_info()["configured"]`` said otherwise.
    """
    global _lock, _default_instance, _shutdown_ended
    _lock = threading.Lock()
    _shutdown_ended = threading.Condition(_lock)
    _stopping_workers.clear()  # those were the parent's threads'
    _deferred.clear()  # likewise
    _backends.clear()
    _inherited_settings.clear()
    _inherited_settings.update(_pool_settings)
    _adapters.clear()
    _default_instance = None


_at_fork_in_child(_reset_after_fork)
