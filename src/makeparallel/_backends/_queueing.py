"""The queue that pool backends share: deques by priority, claimed under the lock.

Highest priority first, first in first out among equals. Entries are never
searched for: a task cancelled or claimed elsewhere is marked (its state is no
longer PENDING) and skipped when it reaches the front.
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from .._states import HELD, INLINE, ON_WORKER, PENDING, RUNNING, UNCLAIMED
from ._base import Backend, counted_by_name

if TYPE_CHECKING:
    from .._handle import AsyncHandle

__all__ = ["QueueingBackend"]


# In a forked child, the queues of the parent's pools, never freed (_drop_queues_after_fork).
_kept_from_the_parent: list[Any] = []


class QueueingBackend(Backend):
    """A backend whose workers take tasks from priority queues."""

    holds_tasks = True

    def __init__(self) -> None:
        super().__init__()
        self._empty_queues()

    def _empty_queues(self) -> None:
        """Start with empty queues, claiming no task."""
        self._queues: dict[int, deque[AsyncHandle[Any]]] = {0: deque()}
        self._by_priority = list(self._queues.items())  # (priority, its queue), highest first
        self._queued = 0  # tasks still pending in the queues (stale entries excluded)
        # Held tasks (hold()), in no queue: found for queued_by_name(); weak, so a dropped one goes.
        self._held: weakref.WeakSet[AsyncHandle[Any]] = weakref.WeakSet()

    def _drop_queues_after_fork(self) -> None:
        """In a forked child, whose queued tasks are the parent's: empty queues, the parent's kept alive.

        Freed, they would write to every task in them (its reference count): a
        millisecond per few thousand tasks on every fork, and the child would
        copy each page of them that it shares with its parent, for nothing.
        """
        _kept_from_the_parent.append(self._queues)
        self._empty_queues()

    def _enqueue_locked(self, handle: AsyncHandle[Any]) -> None:
        queue = self._queues.get(handle._priority)
        if queue is None:
            queue = self._add_priority_locked(handle._priority)
        self._queued += 1
        queue.append(handle)

    def _accept_locked(self, handle: AsyncHandle[Any]) -> None:
        """Queue a newly submitted task, counted as queued, active and in its function's metrics.

        Counted before the append: CPython raises a pending Ctrl-C as a C call
        returns, and after this append the task must already be counted (the
        interrupted submission's caller cancels it, which uncounts it).
        """
        queue = self._queues.get(handle._priority)
        if queue is None:
            queue = self._add_priority_locked(handle._priority)
        handle._observer.task_submitted(handle)
        self._queued += 1
        self._active += 1
        queue.append(handle)

    def _requeue_locked(self, handle: AsyncHandle[Any]) -> None:
        """Put a claimed task that never started back at the front of its queue."""
        handle._state = PENDING
        queue = self._queues.get(handle._priority)
        if queue is None:
            queue = self._add_priority_locked(handle._priority)
        queue.appendleft(handle)
        self._queued += 1

    def _add_priority_locked(self, priority: int) -> deque[AsyncHandle[Any]]:
        queue: deque[AsyncHandle[Any]] = deque()
        # Both stored with no call between: a Ctrl-C as sorted() returns must not
        # leave a queue that _next_locked never looks at.
        by_priority = sorted([*self._queues.items(), (priority, queue)], reverse=True)
        self._queues[priority] = queue
        self._by_priority = by_priority
        return queue

    def _order_queues_locked(self) -> None:
        self._by_priority = sorted(self._queues.items(), reverse=True)  # (priorities are unique)

    def _next_locked(self) -> AsyncHandle[Any] | None:
        """Pop and claim the next pending task, highest priority first, FIFO within one."""
        for priority, queue in self._by_priority:
            while queue:
                handle = queue.popleft()
                if handle._state == PENDING:
                    handle._state = RUNNING
                    handle._on_worker = ON_WORKER
                    queued = self._queued - 1
                    self._queued = queued
                    if not queued and queue:
                        self._drop_stale_locked()
                    return handle
            if priority != 0:
                del self._queues[priority]
                self._order_queues_locked()
                return self._next_locked()
        return None

    def queued_by_name(self) -> dict[str, int]:
        """The tasks not started, by name; not an ``mp.Executor``'s task that carries an adapter's (``unseen``).

        The adapter counts the task carried, as its handle says: elsewhere
        running from its submission. Counted here too, a call to a process
        ``mp.Executor`` whose handle said running read as queued in its metrics.
        """
        with self._lock:
            return counted_by_name(handle for handle in self._not_begun_locked() if not handle._observer.unseen)

    def _not_begun_locked(self) -> list[AsyncHandle[Any]]:
        """The tasks accepted whose handles say pending, that :meth:`queued_by_name` counts: queued, or held for a slot."""
        return self._unstarted_locked()

    def _pending_locked(self) -> list[AsyncHandle[Any]]:
        return [h for q in self._queues.values() for h in q if h._state == PENDING]

    def _unstarted_locked(self) -> list[AsyncHandle[Any]]:
        """The queued tasks, and the held ones (in no queue): what ``close(cancel_pending=True)`` cancels."""
        held = [h for h in self._held if h._state == PENDING and h._on_worker == HELD]
        return self._pending_locked() + held

    def _holds(self, handle: AsyncHandle[Any]) -> bool:
        with self._lock:
            return handle._state == PENDING and handle in self._queues.get(handle._priority, ())

    def _settled_locked(self, handle: AsyncHandle[Any], was_pending: bool) -> None:
        if was_pending:
            self._dequeued_locked()  # cancelled while queued
        super()._settled_locked(handle, was_pending)

    def _cancelled_queued_locked(self, handles: list[AsyncHandle[Any]]) -> None:
        self._queued -= len(handles)
        if not self._queued:
            self._drop_stale_locked()
        self._active -= len(handles)
        if self._active == 0 and self._idle_waiters:
            self._wake_idle_waiters_locked()

    def _dequeued_locked(self) -> None:
        """A queued task was cancelled or claimed inline: its entry is now stale.

        Stale entries are skipped when they reach the front. Once none is pending,
        they are all dropped at once, so the queue keeps no ended task (and no
        result of a task run inline) alive while the pool has nothing to pop.
        """
        self._queued -= 1
        if not self._queued:
            self._drop_stale_locked()

    def _drop_stale_locked(self) -> None:
        """Nothing is pending: every entry left is stale, and none may keep a task alive."""
        for queue in self._queues.values():
            queue.clear()

    def hold(self, handle: AsyncHandle[Any]) -> None:
        """Accept a task that may not start yet: counted as queued, but in no queue.

        :meth:`release_held` queues it once it may start; cancelling it meanwhile
        ends it like any queued task.

        Raises:
            ShutdownError: the backend is closed.
        """
        self._prepare(handle)
        with self._lock:
            self._refuse_if_closed_locked()
            handle._observer.task_submitted(handle)  # first: a Ctrl-C at its entry leaves nothing counted
            handle._on_worker = HELD
            self._queued += 1
            self._active += 1
            self._held.add(handle)

    def release_held(self, handle: AsyncHandle[Any]) -> None:
        """Queue a held task to run, unless it ended meanwhile."""
        with self._lock:
            self._held.discard(handle)
            if handle._state != PENDING:
                return
            handle._on_worker = UNCLAIMED
            queue = self._queues.get(handle._priority)
            if queue is None:
                queue = self._add_priority_locked(handle._priority)
            queue.append(handle)
        self._work_arrived()

    def _prepare(self, handle: AsyncHandle[Any]) -> None:
        """Ready a task for this backend before it is accepted (the process one pickles it)."""

    def _work_arrived(self) -> None:
        """A task was queued without ``submit``: start or wake a worker for it."""
        raise NotImplementedError

    def _steal(self, handle: AsyncHandle[Any]) -> bool:
        with self._lock:
            if handle._state != PENDING or handle._on_worker == HELD:
                return False
            # Uncounted from the queue before it is claimed, with no call between:
            # a Ctrl-C at _drop_stale_locked's entry only leaves stale entries.
            queued = self._queued - 1
            self._queued = queued
            handle._state = RUNNING
            handle._on_worker = INLINE
            if not queued:
                self._drop_stale_locked()
            return True
