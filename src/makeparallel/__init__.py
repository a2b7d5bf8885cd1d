"""makeparallel: run Python functions in parallel on one machine, simply and safely.

    import makeparallel as mp

    @mp.parallel
    def resize(path): ...

    handle = resize("a.png")      # returns at once
    thumbnail = handle.get()      # the result, or the task's own exception

Everything public is importable from here; ``__all__`` is the contract.

Importing the package loads only :mod:`makeparallel.errors` (and the
``concurrent.futures`` it builds on); every other name loads its module on first
use (PEP 562), so ``import makeparallel`` costs about what ``import
concurrent.futures`` does, and a program pays only for the parts it uses.
"""

import os as _os

# The process backend's template process (whose forks are the workers) loads the
# errors on first use, like every other name: with the concurrent.futures and
# logging they import, they were the largest part of a cold worker's imports,
# which most tasks never need (``_backends/_template_start``).
if "_MAKEPARALLEL_TEMPLATE" not in _os.environ:
    from .errors import CircuitOpenError as CircuitOpenError
    from .errors import ShutdownError as ShutdownError
    from .errors import TaskCancelledError as TaskCancelledError
    from .errors import TaskError as TaskError
    from .errors import TaskSerializationError as TaskSerializationError
    from .errors import TaskTimeoutError as TaskTimeoutError
    from .errors import WorkerCrashedError as WorkerCrashedError
__version__ = "0.3.0"

# ``typing.TYPE_CHECKING`` without importing typing; type checkers know the name.
# A new public name goes in __all__, here and in _LAZY (tests/test_public_api.py checks all three).
TYPE_CHECKING = False
if TYPE_CHECKING:  # what the checkers and the documentation read; at run time, _LAZY
    from ._async_collect import gather_async as gather_async
    from ._circuit import CircuitBreaker as CircuitBreaker
    from ._circuit import CircuitState as CircuitState
    from ._circuit import CircuitStatistics as CircuitStatistics
    from ._collect import ALL_COMPLETED as ALL_COMPLETED
    from ._collect import FIRST_COMPLETED as FIRST_COMPLETED
    from ._collect import FIRST_EXCEPTION as FIRST_EXCEPTION
    from ._collect import as_completed as as_completed
    from ._collect import gather as gather
    from ._collect import wait as wait
    from ._compat import start_priority_worker as start_priority_worker
    from ._compat import stop_priority_worker as stop_priority_worker
    from ._decorators import ParallelFunction as ParallelFunction
    from ._decorators import parallel as parallel
    from ._decorators import parallel_async as parallel_async
    from ._decorators import parallel_fast as parallel_fast
    from ._decorators import parallel_pool as parallel_pool
    from ._decorators import parallel_priority as parallel_priority
    from ._events import TaskEvent as TaskEvent
    from ._events import add_task_listener as add_task_listener
    from ._events import remove_task_listener as remove_task_listener
    from ._executor import Executor as Executor
    from ._executor import ExecutorFuture as ExecutorFuture
    from ._gil_watch import GilBoundWarning as GilBoundWarning
    from ._group import ParallelContext as ParallelContext
    from ._group import TaskGroup as TaskGroup
    from ._handle import AsyncHandle as AsyncHandle
    from ._handle import AsyncHandle as AsyncHandleFast
    from ._health import health as health
    from ._map import imap as imap
    from ._map import parallel_map as parallel_map
    from ._metrics import MetricsByName as MetricsByName
    from ._metrics import get_all_metrics as get_all_metrics
    from ._metrics import get_metrics as get_metrics
    from ._metrics import metrics_snapshot as metrics_snapshot
    from ._metrics import profiled as profiled
    from ._metrics import reset_metrics as reset_metrics
    from ._retry import Retry as Retry
    from ._retrying import retry as retry
    from ._retrying import retry_backoff as retry_backoff
    from ._runtime import configure as configure
    from ._runtime import configure_memory_limit as configure_memory_limit
    from ._runtime import configure_process_pool as configure_process_pool
    from ._runtime import configure_thread_pool as configure_thread_pool
    from ._runtime import get_active_task_count as get_active_task_count
    from ._runtime import get_process_pool_info as get_process_pool_info
    from ._runtime import get_thread_pool_info as get_thread_pool_info
    from ._runtime import reset_shutdown as reset_shutdown
    from ._runtime import set_max_concurrent_tasks as set_max_concurrent_tasks
    from ._runtime import shutdown as shutdown
    from ._task_context import check_cancelled as check_cancelled
    from ._task_context import get_current_task_id as get_current_task_id
    from ._task_context import report_progress as report_progress
    from ._task_logging import TaskContextFilter as TaskContextFilter
    from ._task_logging import add_task_context as add_task_context
    from ._task_logging import enable_task_logging as enable_task_logging
    from ._task_metrics import TaskMetrics as PerformanceMetrics
    from ._task_metrics import TaskMetrics as TaskMetrics
    from .errors import CircuitOpenError as CircuitOpenError
    from .errors import ShutdownError as ShutdownError
    from .errors import TaskCancelledError as TaskCancelledError
    from .errors import TaskError as TaskError
    from .errors import TaskSerializationError as TaskSerializationError
    from .errors import TaskTimeoutError as TaskTimeoutError
    from .errors import WorkerCrashedError as WorkerCrashedError

if TYPE_CHECKING:  # (for the fork handlers below, no public name)
    from collections.abc import Callable

# A reload of the package (importlib.reload, a notebook's autoreload) runs this file again in
# the same namespace: it keeps the list, and the one handler registered. A new, empty list lost
# the clean-up of every module loaded already (they do not load again), and the child kept the
# parent's pools; a second handler ran that of each module loaded after twice.
_reloaded = "_in_a_forked_child" in globals()

#: What each module of the package does in a forked child, in the order the modules loaded.
_in_a_forked_child: "list[Callable[[], object]]" = globals().get("_in_a_forked_child", [])


def _at_fork_in_child(handler: "Callable[[], object]") -> None:
    """Run ``handler`` in each child this process forks from now on, after the package's earlier ones.

    The modules of the package register their clean-up for a forked child here,
    not with ``os.register_at_fork`` as they load: the one fork handler that
    runs them all is registered as the package is imported, so they run before
    any handler the program registers after ``import makeparallel``. Registered
    by each module as it loaded (mostly at the first task), they ran after a
    handler the program had registered between its import and its first task,
    and a task that handler ran found the parent's pools in the child: queued
    for threads the child did not have, it was lost, and sent to the parent's
    worker process on the parent's pipe, its answer killed the parent's pool loop.
    """
    _in_a_forked_child.append(handler)


def _run_in_a_forked_child() -> None:
    """The package's fork handler: each module's, in turn, whatever the others raised."""
    failed = None
    for handler in _in_a_forked_child:
        try:
            handler()
        except BaseException as error:  # noqa: BLE001  # as separate fork handlers would, each runs
            if failed is None:
                failed = error
    if failed is not None:
        raise failed  # reported as a fork handler's error is (sys.unraisablehook)


if hasattr(_os, "register_at_fork") and not _reloaded:  # not on Windows; once
    # Fork handlers run in the order they were registered: threading's own (which drops the
    # parent's threads from its list and marks them ended) must run before the package's, one
    # of which starts a thread (the StatsD exporter's). The template does not import the errors,
    # which import threading: there the package's ran first, and the thread it started was
    # taken for one of the parent's (not alive, not listed). The template imports threading
    # anyway, next.
    import threading as _threading  # noqa: F401

    _os.register_at_fork(after_in_child=_run_in_a_forked_child)  # reads the list in this namespace
del _reloaded

#: Each public name loaded on first use: its module, and its name there.
_LAZY: dict[str, tuple[str, str]] = {
    "ALL_COMPLETED": ("_collect", "ALL_COMPLETED"),
    "AsyncHandle": ("_handle", "AsyncHandle"),
    "AsyncHandleFast": ("_handle", "AsyncHandle"),
    "CircuitBreaker": ("_circuit", "CircuitBreaker"),
    "CircuitOpenError": ("errors", "CircuitOpenError"),
    "CircuitState": ("_circuit", "CircuitState"),
    "CircuitStatistics": ("_circuit", "CircuitStatistics"),
    "Executor": ("_executor", "Executor"),
    "ExecutorFuture": ("_executor", "ExecutorFuture"),
    "FIRST_COMPLETED": ("_collect", "FIRST_COMPLETED"),
    "FIRST_EXCEPTION": ("_collect", "FIRST_EXCEPTION"),
    "GilBoundWarning": ("_gil_watch", "GilBoundWarning"),
    "MetricsByName": ("_metrics", "MetricsByName"),
    "ParallelContext": ("_group", "ParallelContext"),
    "ParallelFunction": ("_decorators", "ParallelFunction"),
    "PerformanceMetrics": ("_task_metrics", "TaskMetrics"),
    "Retry": ("_retry", "Retry"),
    "ShutdownError": ("errors", "ShutdownError"),
    "TaskCancelledError": ("errors", "TaskCancelledError"),
    "TaskContextFilter": ("_task_logging", "TaskContextFilter"),
    "TaskError": ("errors", "TaskError"),
    "TaskEvent": ("_events", "TaskEvent"),
    "TaskGroup": ("_group", "TaskGroup"),
    "TaskMetrics": ("_task_metrics", "TaskMetrics"),
    "TaskSerializationError": ("errors", "TaskSerializationError"),
    "TaskTimeoutError": ("errors", "TaskTimeoutError"),
    "WorkerCrashedError": ("errors", "WorkerCrashedError"),
    "add_task_context": ("_task_logging", "add_task_context"),
    "add_task_listener": ("_events", "add_task_listener"),
    "as_completed": ("_collect", "as_completed"),
    "check_cancelled": ("_task_context", "check_cancelled"),
    "configure": ("_runtime", "configure"),
    "configure_memory_limit": ("_runtime", "configure_memory_limit"),
    "configure_process_pool": ("_runtime", "configure_process_pool"),
    "configure_thread_pool": ("_runtime", "configure_thread_pool"),
    "enable_task_logging": ("_task_logging", "enable_task_logging"),
    "gather": ("_collect", "gather"),
    "gather_async": ("_async_collect", "gather_async"),
    "get_active_task_count": ("_runtime", "get_active_task_count"),
    "get_all_metrics": ("_metrics", "get_all_metrics"),
    "get_current_task_id": ("_task_context", "get_current_task_id"),
    "get_metrics": ("_metrics", "get_metrics"),
    "get_process_pool_info": ("_runtime", "get_process_pool_info"),
    "get_thread_pool_info": ("_runtime", "get_thread_pool_info"),
    "health": ("_health", "health"),
    "imap": ("_map", "imap"),
    "metrics_snapshot": ("_metrics", "metrics_snapshot"),
    "parallel": ("_decorators", "parallel"),
    "parallel_async": ("_decorators", "parallel_async"),
    "parallel_fast": ("_decorators", "parallel_fast"),
    "parallel_map": ("_map", "parallel_map"),
    "parallel_pool": ("_decorators", "parallel_pool"),
    "parallel_priority": ("_decorators", "parallel_priority"),
    "profiled": ("_metrics", "profiled"),
    "remove_task_listener": ("_events", "remove_task_listener"),
    "report_progress": ("_task_context", "report_progress"),
    "reset_metrics": ("_metrics", "reset_metrics"),
    "reset_shutdown": ("_runtime", "reset_shutdown"),
    "retry": ("_retrying", "retry"),
    "retry_backoff": ("_retrying", "retry_backoff"),
    "set_max_concurrent_tasks": ("_runtime", "set_max_concurrent_tasks"),
    "shutdown": ("_runtime", "shutdown"),
    "start_priority_worker": ("_compat", "start_priority_worker"),
    "stop_priority_worker": ("_compat", "stop_priority_worker"),
    "wait": ("_collect", "wait"),
}

#: makeparallel 0.2's names not offered here, whose error says what to use instead (``_compat.not_offered``).
_NOT_OFFERED_FROM_0_2 = frozenset(
    ("memoize", "memoize_fast", "retry_cached", "parallel_with_deps", "ParallelWithDeps", "timer", "CallCounter")
)

if not TYPE_CHECKING:  # hidden from type checkers: a misspelt name stays an error there

    def __getattr__(name: str) -> object:
        """Import the module that defines ``name``, once; later lookups find it in the namespace."""
        if name == "errors":  # the submodule, in a template process (above)
            return __import__(f"{__name__}.errors", fromlist=["TaskError"])
        try:
            module_name, attribute = _LAZY[name]
        except KeyError:
            if name in _NOT_OFFERED_FROM_0_2:  # the error says what to use instead
                from ._compat import not_offered

                raise not_offered(__name__, name) from None
            # Made here, importing nothing: hasattr() as the interpreter tears down imports is False still.
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        # __import__, not importlib.import_module: importlib itself would cost an import.
        module = __import__(f"{__name__}.{module_name}", fromlist=[attribute])
        value = getattr(module, attribute)
        globals()[name] = value
        return value

del TYPE_CHECKING


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ALL_COMPLETED",
    "AsyncHandle",
    "AsyncHandleFast",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "CircuitStatistics",
    "Executor",
    "ExecutorFuture",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "GilBoundWarning",
    "MetricsByName",
    "ParallelContext",
    "ParallelFunction",
    "PerformanceMetrics",
    "Retry",
    "ShutdownError",
    "TaskCancelledError",
    "TaskContextFilter",
    "TaskError",
    "TaskEvent",
    "TaskGroup",
    "TaskMetrics",
    "TaskSerializationError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "add_task_context",
    "add_task_listener",
    "as_completed",
    "check_cancelled",
    "configure",
    "configure_memory_limit",
    "configure_process_pool",
    "configure_thread_pool",
    "enable_task_logging",
    "gather",
    "gather_async",
    "get_active_task_count",
    "get_all_metrics",
    "get_current_task_id",
    "get_metrics",
    "get_process_pool_info",
    "get_thread_pool_info",
    "health",
    "imap",
    "metrics_snapshot",
    "parallel",
    "parallel_async",
    "parallel_fast",
    "parallel_map",
    "parallel_pool",
    "parallel_priority",
    "profiled",
    "remove_task_listener",
    "report_progress",
    "reset_metrics",
    "reset_shutdown",
    "retry",
    "retry_backoff",
    "set_max_concurrent_tasks",
    "shutdown",
    "start_priority_worker",
    "stop_priority_worker",
    "wait",
]
