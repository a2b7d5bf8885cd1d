"""``health()``: whether the library can do its work, and if not, why.

Serve it as ``/health`` from a web framework (see the README). The status is
``"ok"``, ``"degraded"`` (working, but a threshold is crossed: queues saturated,
workers stuck or missing, worker processes restarting in a storm, memory short)
or ``"unhealthy"`` (not accepting work: shut down, or a process pool that gave
up starting workers and fails every task until configured again; or broken: a
worker thread or the process pool's loop thread died). ``live`` says the
process should be kept (false once a pool thread died of an error: a task may
never end, so restart the process); ``ready`` that it should be sent work.

A restart storm: more worker process restarts (crashes, timeouts, forced
cancels, ``max_worker_memory``; not the replacements ``max_tasks_per_child``
asks for, nor workers stopped with a map or a batch that was stopped as a
whole, ``"stopped"``) within the last 10 seconds than the pool has workers. One restart per
worker in that time is an incident; more means most tasks are failing and the
pool spends its time starting processes.

A slow start: a process worker still starting (its initializer running) after
:data:`SLOW_START` seconds, as long as the FastAPI lifespan waits for
prestarted workers. It is degraded; unhealthy while no worker is ready and
tasks wait for one: an initializer that never returns holds them for good, and
a saturated queue is too late a sign (ten tasks per worker).
"""

from __future__ import annotations

import sys
from typing import Any

from . import _circuit
from ._circuit import CircuitState, labelled_breakers
from ._runtime import (
    global_limiter,
    held_below,
    is_shut_down,
    memory_guard_locks,
    pool_infos,
    pool_locks,
)
from ._validation import check_count, is_real

__all__ = ["health"]

OK, DEGRADED, UNHEALTHY = "ok", "degraded", "unhealthy"
#: Seconds a process worker may take to start (fork, set-up, initializer) before health() says so:
#: the time ``makeparallel.fastapi.lifespan(prestart=True)`` gives its workers to be ready.
SLOW_START = 60.0


def health(memory_limit_percent: float = 90.0, queue_limit: int | None = None) -> dict[str, Any]:
    """Check the pools, the queues, the memory and the shutdown state.

    Args:
        memory_limit_percent: memory in use above which the status is
            degraded, in percent of this process's memory limit: its
            container's (cgroup), else ``RLIMIT_AS``, else the host's, read as
            :func:`configure_memory_limit` reads it.
        queue_limit: queued tasks per pool above which it is saturated; default:
            ten per worker.

    Returns:
        ``{"status", "live", "ready", "reasons", "pools", "memory_percent"}``;
        ``reasons`` is a list of sentences, empty when all is well;
        ``pools`` maps each pool's name to its info: ``"thread"``,
        ``"process"``, ``"sync"``, ``"dask"``, ``"executor-<id>"`` for an
        executor given as ``backend=`` (its ``busy_workers`` are those running
        the library's tasks; it has no live or idle count), and
        ``"Executor-<id>"`` for an ``mp.Executor``'s own pool until it is shut
        down and idle (``id(executor)`` in hex);
        ``memory_percent`` is ``None`` where the system refused to tell
        (a program out of file descriptors cannot read ``/proc/meminfo``):
        the status is then degraded, with the system's error as its reason.

    Raises:
        TypeError: ``memory_limit_percent`` is not a number, or ``queue_limit``
            not an int.
        ValueError: ``memory_limit_percent`` is outside (0, 100], or
            ``queue_limit`` below 1.

    In a signal handler:
        Called from one (a ``SIGUSR1`` handler that logs it) that interrupted
        the main thread as it held a lock of the library's that the report
        reads (a pool's, as a task was submitted; an open breaker's), it
        could never take that lock: it waited for good. There it returns
        within 0.25 s a report that says so: ``"degraded"`` (``"unhealthy"``
        once shut down), ``pools`` empty, ``memory_percent`` ``None``, and a
        first reason that begins ``"not read"``.
    """
    if not is_real(memory_limit_percent):
        raise TypeError(f"memory_limit_percent must be a number, got {memory_limit_percent!r}")
    if not 0 < memory_limit_percent <= 100:
        raise ValueError(f"memory_limit_percent must be in (0, 100], got {memory_limit_percent!r}")
    memory_limit_percent = float(memory_limit_percent)
    if queue_limit is not None:
        queue_limit = check_count(queue_limit, "queue_limit")
    if held_below(_locks_health_takes):
        return _unread_report()
    pools = pool_infos()
    reasons: list[str] = []
    broken: list[str] = []
    stalled: list[str] = []  # tasks that wait for workers which do not get ready
    for name, info in pools.items():
        reasons += _pool_reasons(name, info, queue_limit)
        broken += _broken_reasons(name, info)
        slow = _slow_start_reason(name, info)
        if slow is not None:
            (stalled if _waits_on_start(info) else reasons).append(slow)
    limit = global_limiter.limit
    if limit is not None and global_limiter.in_flight >= limit:
        reasons.append(f"at the concurrency limit: {global_limiter.in_flight} of {limit} tasks in flight")
    for label, breaker in labelled_breakers().items():  # labelled as in the metrics
        if breaker.state is CircuitState.OPEN:
            stats = breaker.statistics()
            reasons.append(
                f"circuit breaker {label!r} is open ({breaker.why_open(stats.failure_rate, stats.slow_call_rate)}): "
                "calls through it are refused"
            )
    reasons += _memory_guard_reasons()
    try:
        memory_percent: float | None = _memory_percent()
    except OSError as error:  # a health check that raises says nothing of what is wrong
        memory_percent = None
        reasons.append(f"memory use cannot be read: {type(error).__name__}: {error}")
    if memory_percent is not None and memory_percent >= memory_limit_percent:
        reasons.append(f"memory is {memory_percent:.0f}% used (limit {memory_limit_percent:g}%)")
    status = DEGRADED if reasons else OK
    refusing = [
        f"{name} pool fails every task: {info['refusing_tasks']}"  # which says until when
        for name, info in pools.items()
        if info.get("refusing_tasks")
    ]
    if refusing or broken or stalled:
        status = UNHEALTHY
        reasons[:0] = broken + refusing + stalled
    if is_shut_down():
        status = UNHEALTHY
        reasons.insert(0, "shut down: no new tasks are accepted (reset_shutdown() reopens)")
    return {
        "status": status,
        "live": not broken,
        "ready": status != UNHEALTHY,
        "reasons": reasons,
        "pools": pools,
        "memory_percent": memory_percent,
    }


def _locks_health_takes() -> list[Any]:
    """The locks :func:`health` takes: the pools', the open breakers', the memory guard's."""
    # Listed without the registry's lock, which is among those read (a breaker made as the signal came).
    breakers = [breaker._lock for breaker in list(_circuit._breakers) if breaker.state is CircuitState.OPEN]
    return [*pool_locks(), _circuit._breakers_lock, *breakers, *memory_guard_locks()]


def _unread_report() -> dict[str, Any]:
    """What :func:`health` says where a lock it takes is held by the code a signal handler interrupted."""
    reason = (
        "not read: health() was called from a signal handler that interrupted the main thread as it held a lock "
        "of makeparallel's (a task's submission, say), which reading the pools needs; call it from another "
        "thread, or have the handler set a flag and check health from your program's own flow"
    )
    shut_down = is_shut_down()
    reasons = [reason, *(["shut down: no new tasks are accepted (reset_shutdown() reopens)"] if shut_down else [])]
    return {
        "status": UNHEALTHY if shut_down else DEGRADED,
        "live": True,
        "ready": not shut_down,
        "reasons": reasons,
        "pools": {},
        "memory_percent": None,
    }


def _memory_guard_reasons() -> list[str]:
    guard = sys.modules.get("makeparallel._memory_guard")  # loaded only once a limit was configured
    current = None if guard is None else guard.current_guard()
    if current is None or not current.paused:
        return []
    figures = current.snapshot()
    return [
        f"memory is {figures['used_percent']:.0f}% used ({figures['source']}: {figures['used_bytes']} of "
        f"{figures['limit_bytes']} bytes), over the limit of {figures['limit_percent']:g}%: pools start "
        "new tasks one at a time"
    ]


def _pool_reasons(name: str, info: dict[str, Any], queue_limit: int | None) -> list[str]:
    reasons = []
    workers = info.get("num_threads", info.get("num_workers", 1))
    queued = info.get("queued_tasks", 0)
    limit = queue_limit if queue_limit is not None else 10 * workers
    if queued > limit:
        reasons.append(f"{name} pool saturated: {queued} tasks queued for {workers} workers (limit {limit})")
    if info.get("stuck_threads"):
        reasons.append(f"{name} pool: {info['stuck_threads']} thread(s) stuck in timed-out or cancelled tasks")
    if queued and info.get("live_workers", info.get("live_threads", workers)) == 0 and not info.get("closed"):
        reasons.append(f"{name} pool: tasks are queued but no worker is alive yet")
    if info.get("refused_starts"):
        reasons.append(
            f"{name} pool: cannot start more workers ({info['refused_starts']}); "
            f"{info.get('live_workers')} of {workers} run the tasks"
        )
    restarts = info.get("restarts_in_window", 0)
    if restarts > workers:
        why = ", ".join(f"{reason}: {count}" for reason, count in info["restart_reasons_in_window"].items())
        reasons.append(
            f"{name} pool: {restarts} worker restarts in the last {info['restart_window_s']:g} s "
            f"for {workers} workers ({why})"
        )
    return reasons


def _slow_start_reason(name: str, info: dict[str, Any]) -> str | None:
    """What a worker starting for longer than :data:`SLOW_START` does to the pool, or None."""
    longest = info.get("longest_start_s")
    if longest is None or longest <= SLOW_START or info.get("closed"):
        return None
    # The initializer that worker runs: a new one (the pool's) leaves it running its own.
    runs = info.get("longest_start_initializer")
    initializer = f" (initializer {runs})" if runs else ""
    if _waits_on_start(info):
        waiting = info.get("queued_tasks", 0)  # those held for the workers starting among them
        return f"{name} pool: {waiting} task(s) wait for workers starting for over {SLOW_START:g} s{initializer}, and none is ready"
    ready = info.get("ready_workers") or "none"
    return f"{name} pool: {info['starting_workers']} worker(s) starting for over {SLOW_START:g} s{initializer}, {ready} ready"


def _waits_on_start(info: dict[str, Any]) -> bool:
    """Whether tasks wait for a worker while none is ready: they wait on those starting."""
    return not info.get("ready_workers") and bool(info.get("queued_tasks", 0))


def _broken_reasons(name: str, info: dict[str, Any]) -> list[str]:
    """What makes the process not live: a pool thread that died of an error."""
    reasons = []
    if info.get("dead_threads"):
        reasons.append(
            f"{name} pool: {info['dead_threads']} worker thread(s) died of an error (logged); "
            "a task may never end: restart the process"
        )
    if info.get("loop_deaths"):
        reasons.append(
            f"{name} pool: its loop thread died of an error {info['loop_deaths']} time(s) (logged); "
            "tasks were failed: restart the process"
        )
    return reasons


def _memory_percent() -> float:
    """Memory in use, in percent of this process's budget: its container's limit first.

    Not ``psutil.virtual_memory()``: inside a container it reports the host, which
    says memory is plentiful until the OOM killer ends the process.
    """
    from . import _memory_budget  # loaded with the first health check

    return _memory_budget.memory_budget().percent
