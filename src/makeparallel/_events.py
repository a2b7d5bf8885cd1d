"""Task events for custom exporters: submitted, started, retry, finished.

A listener is called with a :class:`TaskEvent` for each event of each task, on the
thread where it happened (the submitter, the worker, or whoever ended the task;
or the thread telling the task's event before it, see below), outside every
lock of the library. It must be quick and must not block; one that
raises (even ``SystemExit`` or another ``BaseException``) is logged and harms
nothing; only a ``KeyboardInterrupt`` on the main thread is raised again, once
every listener was called. With no listener registered, tasks pay one
check of a module attribute per event, nothing more.

The built-in exporters (Prometheus, StatsD) do not listen: they read the
metrics, so they cost nothing per task.

One task's events come in their order, whichever threads they happen on:
"submitted", a "started" per attempt that starts and a "retry" per attempt
retried, "finished" last, each once. A task's events are told by one thread at
a time: one that happens while another thread tells one of the same task waits
in a queue that thread tells next, to the listeners there were when it
happened. And they are put in order as they are queued: a
"started" after the task ended (cancelled, or timed out, as it started) is
dropped, as is one told again (a process task sent again after its worker
died); a "retry" not told yet when the next attempt starts is told then, and
not again; nothing follows "finished". A circuit breaker's "circuit" events
come in the order of its state changes, told so too by one thread at a time
(``_circuit``), on a thread of their own where the change happened under a
pool's lock or on the thread that serves timeouts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._states import STATE_NAMES, SUCCEEDED
from ._validation import refuse_unfitting_call, refuse_unused_call

if TYPE_CHECKING:
    from ._handle import AsyncHandle

__all__ = [
    "TaskEvent",
    "add_task_listener",
    "emit",
    "emit_circuit",
    "listeners",
    "remove_task_listener",
    "submitted_told_here",
]

_log = logging.getLogger("makeparallel")
_lock = threading.Lock()

#: The listeners, replaced (never changed in place) so that emitters read it without a lock.
listeners: tuple[Callable[[TaskEvent], object], ...] = ()


class TaskEvent:
    """One event in the life of a task.

    Frozen, equal to another event with the same fields.

    Attributes:
        kind: ``"submitted"``, ``"started"``, ``"retry"`` (an attempt failed and
            another is scheduled, told as its wait begins: a ``cancel()`` or
            ``shutdown()`` during the wait ends the task with no other
            ``"started"``, and the metrics count no retry for it),
            ``"finished"``, or ``"circuit"`` (not a task's:
            a circuit breaker changed state).
        task_id: the task's id (``handle.get_task_id()``).
        name: the function's name, as metrics know it.
        status: the task's state then: ``"pending"``, ``"running"``,
            ``"succeeded"``, ``"failed"``, ``"cancelled"`` or ``"timed out"``.
        time: wall-clock time of the event (``time.time()``).
        queue_wait: seconds it waited for a worker, once it started: from
            submission to start; for a retried task, its last attempt's, from
            the moment that retry was due.
        duration: seconds it ran, once it finished having started.
        metadata: a copy of the task's metadata.
        attempt: for ``"retry"``: the number of the attempt that failed (1 for the first).
        error: for ``"retry"``: the exception that attempt raised.
        wait: for ``"retry"``: seconds until the next attempt.
        breaker, old_state, new_state: for ``"circuit"`` (a circuit breaker changed
            state; ``task_id`` is 0, ``name`` and ``status`` are the breaker's name
            and new state): the breaker's name and its states before and after.

    A frozen record with ``__slots__`` rather than a dataclass: importing
    ``dataclasses`` (and the ``inspect`` it loads) would cost more than the package.
    """

    __slots__ = (
        "attempt",
        "breaker",
        "duration",
        "error",
        "kind",
        "metadata",
        "name",
        "new_state",
        "old_state",
        "queue_wait",
        "status",
        "task_id",
        "time",
        "wait",
    )

    kind: str
    task_id: int
    name: str
    status: str
    time: float
    queue_wait: float | None
    duration: float | None
    metadata: dict[str, Any]
    attempt: int | None
    error: BaseException | None
    wait: float | None
    breaker: str | None
    old_state: str | None
    new_state: str | None

    def __init__(
        self,
        kind: str,
        task_id: int,
        name: str,
        status: str,
        time: float,
        queue_wait: float | None,
        duration: float | None,
        metadata: dict[str, Any],
        attempt: int | None = None,
        error: BaseException | None = None,
        wait: float | None = None,
        breaker: str | None = None,
        old_state: str | None = None,
        new_state: str | None = None,
    ) -> None:
        values = locals()
        for field in _FIELDS:
            object.__setattr__(self, field, values[field])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"TaskEvent is frozen: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"TaskEvent is frozen: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not TaskEvent:
            return NotImplemented
        return all(getattr(self, field) == getattr(other, field) for field in _FIELDS)

    __hash__ = None  # type: ignore[assignment]  # equal by value, and metadata is a dict

    def __reduce__(self) -> tuple[type[TaskEvent], tuple[Any, ...]]:
        # Pickled and copied by its fields: the default would set them one by one, which freezing refuses.
        return (TaskEvent, tuple(getattr(self, field) for field in _FIELDS))

    def __repr__(self) -> str:
        return f"TaskEvent({', '.join(f'{field}={getattr(self, field)!r}' for field in _FIELDS)})"


#: The fields in declaration order, as the constructor takes them.
_FIELDS = tuple(TaskEvent.__annotations__)


def add_task_listener(listener: Callable[[TaskEvent], object]) -> None:
    """Call ``listener(event)`` for every task event from now on, on the thread where it happens.

    Args:
        listener: a plain function of one :class:`TaskEvent`; what it returns is dropped.

    Raises:
        TypeError: ``listener`` is not callable, or calling it makes what nothing
            would use, as the handle's callbacks refuse it: an object (a class),
            a coroutine or an async generator (an ``async def`` function, an
            object whose ``__call__`` is one), or a generator (a function that
            yields); also behind ``functools.partial``; or its signature cannot
            take one argument (one written in C, or with no signature to read, is taken).
    """
    global listeners
    if not callable(listener):
        raise TypeError(f"listener must be callable, got {listener!r}")
    refuse_unused_call(
        "add_task_listener", listener, "at each task event", "function(event)", "the thread where it happens"
    )
    refuse_unfitting_call("a task listener", listener, "event", "at each task event")
    with _lock:
        listeners = (*listeners, listener)


def remove_task_listener(listener: Callable[[TaskEvent], object]) -> None:
    """Stop calling ``listener``; raises ``ValueError`` if it was not added."""
    global listeners
    with _lock:
        if listener not in listeners:
            raise ValueError(f"{listener!r} is not a task listener")
        remaining = list(listeners)
        remaining.remove(listener)
        listeners = tuple(remaining)


def emit(kind: str, handle: AsyncHandle[Any], **details: Any) -> None:
    """Tell every listener that ``kind`` happened to ``handle``, in the task's order; ``details``: the event's own fields.

    Nothing of a task whose observer is ``unseen``: an ``mp.Executor``'s task
    that runs another (``@parallel(backend=executor)``), which is told.
    """
    if handle._observer.unseen:
        return
    event = _event(kind, handle, details)
    if kind == "submitted":  # before the task is submitted: no other thread has it yet
        handle._event_order = _Order()
        told = _submitting.handle  # (a listener that submits a task is told of it inside)
        _submitting.handle = handle
        try:
            _tell(event, listeners)
        finally:
            _submitting.handle = told
        return
    order = getattr(handle, "_event_order", None)
    if order is None:  # submitted before any listener was added: told as it comes
        _tell(event, listeners)
        return
    told_to = listeners  # those listening as it happened: one removed meanwhile still hears it
    with order.lock:
        events = order.in_order_locked(handle, event)
        if not events:
            return
        queue = order.queue
        for queued in events:
            queue.append((queued, told_to))
        if order.telling:  # another thread tells this task's events: it tells these next
            return
        order.telling = True
    interrupt: KeyboardInterrupt | None = None
    try:
        while True:
            with order.lock:
                if not queue:
                    order.telling = False
                    if order.last == "finished":
                        handle._event_order = _ENDED  # nothing more to tell: a shared record, not its own
                    break
                event, told_to = queue.popleft()
            try:
                _tell(event, told_to)
            except KeyboardInterrupt as error:  # on the main thread: once the queue is told
                interrupt = interrupt or error
    except BaseException:  # a Ctrl-C between two events: the task's next event tells what is left, first
        order.telling = False
        raise
    if interrupt is not None:
        raise interrupt


class _Submitting(threading.local):
    handle: AsyncHandle[Any] | None = None


#: The task whose "submitted" event this thread tells now, if any (:func:`submitted_told_here`).
_submitting = _Submitting()


def submitted_told_here() -> AsyncHandle[Any] | None:
    """The task whose "submitted" event the listeners are told on this thread now, or ``None``.

    That task is submitted once they return, holding its slots of the limits
    meanwhile: a wait for every task there (``wait_until_idle()``) could never
    see it end.
    """
    return _submitting.handle


class _Order:
    """One task's events in order (see the module's doc): what was queued, and who tells them.

    A lock per task, not one for all: threads telling events of different tasks
    never wait for each other (under the GIL, a lock they contend for costs a
    switch interval).
    """

    __slots__ = ("last", "lock", "queue", "retries", "telling")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last = "submitted"  # the kind of the last event queued
        self.retries = 0  # how many "retry" events were queued
        self.telling = False  # whether a thread tells this task's events now
        # What happened while a thread told the one before: each event, with the listeners then.
        self.queue: deque[tuple[TaskEvent, tuple[Callable[[TaskEvent], object], ...]]] = deque()

    def in_order_locked(self, handle: AsyncHandle[Any], event: TaskEvent) -> tuple[TaskEvent, ...]:
        """The events to queue for ``event``, so that the task's events stay in order."""
        last = self.last
        if last == "finished":
            return ()
        events: tuple[TaskEvent, ...] = (event,)
        kind = event.kind
        if kind == "started":
            record = None if last == "submitted" else getattr(handle, "_retry", None)  # no retry before a start
            if record is not None and len(record.failures) > self.retries:  # its retry is on its way from another thread
                self.retries = len(record.failures)
                retry = _event("retry", handle, {"attempt": self.retries, "error": record.last_error, "wait": record.wait})
                events = (retry, event)
            elif last == "started" or handle._state >= SUCCEEDED:
                return ()  # sent again, or ended (cancelled, timed out) before it was told
        elif kind == "retry":
            if event.attempt is not None and event.attempt <= self.retries:
                return ()  # told as the next attempt started
            self.retries = event.attempt or self.retries + 1
        self.last = events[-1].kind
        return events


#: The record of every task whose "finished" was told: it drops whatever comes after.
_ENDED = _Order()
_ENDED.last = "finished"


def _event(kind: str, handle: AsyncHandle[Any], details: dict[str, Any]) -> TaskEvent:
    started = handle._started_at
    finished = handle._finished_at
    return TaskEvent(
        kind=kind,
        task_id=handle._id,
        name=handle._observer.name,
        status=STATE_NAMES[handle._state],
        time=time.time(),
        queue_wait=handle._queue_wait(),
        duration=None if started is None or finished is None else finished - started,
        metadata=dict(handle._metadata or {}),
        **details,
    )


def emit_circuit(
    breaker: str, old_state: str, new_state: str, when: float, listening: tuple[Callable[[TaskEvent], object], ...]
) -> None:
    """Tell ``listening``, the listeners there were then, that the circuit breaker ``breaker`` changed state at ``when`` (``time.time()``)."""
    _tell(
        TaskEvent(
            kind="circuit",
            task_id=0,
            name=breaker,
            status=new_state,
            time=when,
            queue_wait=None,
            duration=None,
            metadata={},
            breaker=breaker,
            old_state=old_state,
            new_state=new_state,
        ),
        listening,
    )


def _tell(event: TaskEvent, listening: tuple[Callable[[TaskEvent], object], ...]) -> None:
    interrupt: KeyboardInterrupt | None = None
    for listener in listening:
        try:
            listener(event)
        except BaseException as error:
            # As for callbacks: nothing a listener raises may end a worker or
            # loop thread; Ctrl-C on the main thread goes on once all were told.
            if isinstance(error, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
                interrupt = interrupt or error
            else:
                _log.exception("task listener %r raised on %s", listener, event)
    if interrupt is not None:
        raise interrupt
