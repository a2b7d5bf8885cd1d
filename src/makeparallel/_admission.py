"""Admission control: at most N tasks in flight, the next submission waits.

A limit counts tasks from submission until their handle ends. A submission over
the limit blocks the submitting thread (backpressure: a producer can never run
ahead of the pool), and is never dropped.

Nested parallelism: a task that submits more tasks is never made to wait. If it
were, tasks holding every slot while waiting for their children would deadlock.
Such submissions are admitted over the limit and counted like any other. A
group's limit (``exempt_tasks=False``) bounds the submissions of a task too,
for a group opened inside a task runs its block there; it admits over the limit
only the tasks that hold one of its slots, and those they submit in turn
(:func:`holding_a_slot` marks them in the context each task runs in, a copy of
its submitter's), whose wait could otherwise only end with their own.

Event loops: a submission from a thread whose asyncio event loop is running must
not block that loop (every coroutine on it would stall). There the task is
accepted at once, held back from starting, and waits in the limiter's queue of
deferred admissions (:class:`PendingAdmission`); a slot freed by a task's end
passes to it, and the rest of its admission continues on the admission thread.
Backpressure there comes from awaiting the handles.

Fairness: slots go first come, first served. Blocked submissions and deferred
admissions wait in one queue, oldest first; a freed slot is handed to the
oldest (still counted, so no other caller can take it meanwhile), and a new
submission is admitted at once only where nobody waits (or where it is
exempt, as above). Without the queue a thread that freed a slot and asked
again took it back before the waiter it woke could run: a loop of calls
starved a map on another thread for good, and a map on an event loop, whose
deferred admissions went first, starved every blocked thread. A waiter that
gives up (its deadline, its task's stop, shutdown, its recipient's refusal,
Ctrl-C) leaves the queue, and passes on a slot handed to it meanwhile.

Interrupts: Ctrl-C raises ``KeyboardInterrupt`` on the main thread at its next
call (or loop's jump back), and the main thread frees slots too: a task's end
on the ``"sync"`` backend, ``cancel()``, ``shutdown()``. A slot is handed over
so that an interrupt anywhere in it leaves it with the waiter or with the
caller, who hands it over again before the interrupt goes on
(:meth:`Limiter._hand_over_locked`): taken off the queue first and granted
after, a waiter interrupted between the two never got its slot, which stayed
counted, held by nobody, and every later submission waited for it.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

from . import _at_fork_in_child, _held_on_loop, _interruptible
from ._backends._base import BlockingWait
from ._coroutines import on_callers_loops, running_loop
from ._states import FAILED, PENDING, SUCCEEDED
from ._task_context import CancellationPoint, current_task
from .errors import ShutdownError

if TYPE_CHECKING:
    from ._backends._base import Backend
    from ._handle import AsyncHandle

__all__ = [
    "Limiter",
    "NoSlotInTime",
    "PendingAdmission",
    "Recipient",
    "ResultReady",
    "UntilReady",
    "all_limiters",
    "holding_a_slot",
]

_SHUT_DOWN_WHILE_WAITING = (
    "makeparallel was shut down while this submission waited for a free slot; call "
    "makeparallel.reset_shutdown() to accept tasks again"
)
# A call made once shut down, the limit full, never waited: it is told what a pool's refusal tells.
_SHUT_DOWN_BEFORE = (
    "makeparallel is shut down and accepts no new tasks; call makeparallel.reset_shutdown() to accept tasks again"
)

# Weak references in a plain set, copied in one C call (all_limiters): a WeakSet iterates in
# Python, and a limiter made meanwhile on another thread (a TaskGroup's) made that raise.
_limiters: set[weakref.ref[Limiter]] = set()
# The limits (exempt_tasks=False) that the code running now holds a slot of, as a task
# admitted through them or one that such a task submitted, however deep.
_slots_held: ContextVar[tuple[Limiter, ...]] = ContextVar("makeparallel_slots_held", default=())


class NoSlotInTime(Exception):
    """A submission got no slot under a limit before its deadline (a map's or group's ``timeout``); nothing was submitted.

    Internal: the map, group or executor that passed the deadline raises its own
    ``TaskTimeoutError`` in its place, as for a result that came too late.
    """


class Recipient(Protocol):
    """What a submission waits for a slot for (a group), which may stop taking tasks meanwhile.

    A wait for a slot under a limit the recipient does not own
    (``mp.set_max_concurrent_tasks``, a function's ``max_concurrent``) could
    outlast it: a group failed, or its block ended, while another thread's
    submission to it waited, and that submission made its task once the slot
    came. The recipient is told as the wait begins and ends, and the wait ends
    where it refuses; its stop wakes the limiters waited on
    (:meth:`Limiter.wake_waiters`).
    """

    def _slot_wait_begins(self, limiter: Limiter) -> None:
        """This thread is about to wait for a slot of ``limiter`` (it found none free)."""

    def _slot_wait_ends(self, limiter: Limiter) -> None:
        """This thread's wait for a slot of ``limiter`` ended, with a slot or not (told once begun, or not)."""

    def _refuse_waiting(self) -> None:
        """Raise the recipient's refusal of this waiting submission if it takes no more tasks.

        Called under a limiter's lock, it takes no lock.
        """

    def _slot_holders(self, limiter: Limiter) -> Container[Any]:
        """The tasks that hold a slot of ``limiter`` as the recipient's own, where it owns that limit (a group's ``max_concurrent``); else none.

        A task holds a slot of any other limit in its ``_permits``. Asked
        outside the limiter's lock, on a loop's thread, as a wait there begins
        and after each task it ran in place (:meth:`Limiter._refuse_to_block_their_loop`).
        """


class ResultReady(Exception):
    """A lazy map's wait for a slot ended as its next result became ready (:class:`UntilReady`); nothing was submitted.

    Internal: the map hands that result out, and submits after it.
    """


class UntilReady:
    """A :class:`Recipient` whose waits for a slot end once ``ready()`` is true: a lazy map's next submission.

    A map that refilled before handing out its next result waited for a slot
    in :meth:`Limiter.acquire` while that result was ready: it was held back,
    and for good where the submitter that got the slot first waited for what
    the map's consumer does with it. With this recipient the wait raises
    :class:`ResultReady` instead (a slot handed over meanwhile goes back, to
    the next waiter). Whatever makes ``ready()`` true calls :meth:`wake` (a
    done-callback); ``ready`` is called under a limiter's lock, and takes none.
    :meth:`follow` does, for each call the map submits: at once under a limit,
    else as a wait begins (outside the lock), for every call then in flight,
    as ``in_flight()`` gives them. Only under a limit: the callback cost a
    map of many short calls about a tenth of its time. And not only as
    submitted: the calls a map submitted before a limit was set
    (``mp.set_max_concurrent_tasks`` while it runs) woke no wait, which then
    held a ready result back.

    ``ready`` and ``in_flight`` are methods of the map, which holds this
    recipient: they are held weakly. Held strongly, the two made a cycle that
    kept the map, its input and the results it left unread until the garbage
    collector ran.
    """

    __slots__ = ("_in_flight", "_ready", "_unarmed", "_waiting_on")

    def __init__(self, ready: Callable[[], bool], in_flight: Callable[[], Iterable[Any]]) -> None:
        self._ready = weakref.WeakMethod(ready)
        self._in_flight = weakref.WeakMethod(in_flight)
        self._waiting_on: list[Limiter] = []  # the limiters waited on now, by the one thread that submits
        self._unarmed = False  # a call in flight was followed with no limit: its end wakes no wait yet

    def follow(self, call: Any, limited: bool) -> None:
        """``call`` (a handle or a future) was submitted, under a limit or not: its end is to wake a wait for a slot."""
        if limited:
            call.add_done_callback(self.wake)
        else:  # no wait to wake, unless a limit is set before it ends
            self._unarmed = True

    def _slot_wait_begins(self, limiter: Limiter) -> None:
        self._waiting_on.append(limiter)  # first: a call that ends as it is armed wakes this wait
        in_flight = self._in_flight()
        if self._unarmed and in_flight is not None:
            self._unarmed = False
            for call in in_flight():
                call.add_done_callback(self.wake)

    def _slot_wait_ends(self, limiter: Limiter) -> None:
        try:
            self._waiting_on.remove(limiter)
        except ValueError:  # a Ctrl-C landed before it was told
            pass

    def _slot_holders(self, limiter: Limiter) -> Container[Any]:
        return ()  # a map owns no limit

    def _refuse_waiting(self) -> None:
        ready = self._ready()  # None once the map is gone: nothing of it waits then
        if ready is not None and ready():
            raise ResultReady

    def wake(self, _: object = None) -> None:
        """``ready()`` may be true now: the waits under way look again (a done-callback: the argument is ignored).

        A wait that begins after this finds it true as it checks, under the lock, before it sleeps.
        """
        for limiter in self._waiting_on[:]:
            limiter.wake_waiters()


def all_limiters() -> list[Limiter]:
    """Every limiter alive, for shutdown to wake their waiters and the reset to reopen them.

    Listed from a copy taken in one C call: iterated in Python, a limiter made
    meanwhile on another thread (a ``TaskGroup(max_concurrent=...)`` per
    request) raised out of ``shutdown()`` or ``reset_shutdown()`` half done,
    the library's state and its pools' at odds.
    """
    return [limiter for limiter in (ref() for ref in _limiters.copy()) if limiter is not None]


class Limiter:
    """Counts tasks in flight against an optional limit."""

    __slots__ = ("__weakref__", "_closed", "_exempt_tasks", "_free_waiters", "_in_flight", "_lock", "_waiters", "limit")

    def __init__(self, limit: int | None, exempt_tasks: bool = True) -> None:
        """``exempt_tasks``: admit submissions from inside tasks without waiting.

        Else only those from tasks holding a slot of this limit, or made by
        one (:func:`holding_a_slot`).
        """
        self.limit = limit
        self._exempt_tasks = exempt_tasks  # read-only outside set_limit(); a plain slot for the hot path
        self._in_flight = 0
        self._closed = False
        self._lock = threading.Lock()
        # Blocked submissions and deferred admissions, oldest first. Not empty only while
        # the limit is reached: a slot freed, or a raised limit, is handed to the oldest.
        # An ordered dict (values unused), not a deque: a task that ends while queued leaves
        # at once wherever it is (PendingAdmission._ended), where a deque's remove() scanned
        # the queue: cancelling 20,000 queued calls newest first took 2.3 s instead of 0.04 s.
        # The oldest is read by a loop's first turn (`for ... break`): no call, where Ctrl-C
        # could land (see _hand_over_locked).
        self._waiters: OrderedDict[_Waiter | PendingAdmission, None] = OrderedDict()
        self._free_waiters: list[threading.Lock] = []  # waits for no slot taken (exit's: wait_free)
        _limiters.add(weakref.ref(self, _limiters.discard))

    @property
    def in_flight(self) -> int:
        """Tasks admitted through this limiter that have not ended."""
        return self._in_flight

    def set_limit(self, limit: int | None) -> None:
        """Change the limit; a raised one hands its new slots to the oldest waiting submissions at once.

        Interrupted (Ctrl-C), it hands them all the same, then raises.
        """
        with self._lock:
            self.limit = limit
            try:
                self._hand_on_free_slots_locked()
            except BaseException:
                self._hand_on_free_slots_locked()  # goes on from where the interrupt cut it short
                raise

    def _hand_on_free_slots_locked(self) -> None:
        """Hand each slot free under the limit to the oldest waiter, counted, until none is free or nobody waits."""
        waiters = self._waiters
        while waiters and (self.limit is None or self._in_flight < self.limit):
            for oldest in waiters:
                break
            self._hand_over_locked(oldest, self._in_flight + 1)

    def _hand_over_locked(self, waiting: _Waiter | PendingAdmission, in_flight: int) -> None:
        """Make a slot the own of ``waiting``, first in the queue, with ``in_flight`` tasks counted then; under the lock.

        Ctrl-C may land at any call in it (see the module docstring). The
        waiter is told first, and looks under this lock whether the slot is
        its own: a blocked call's wait wakes, a deferred admission's next
        step is queued. The slot is made its own only then, in steps with no
        call between them, where no interrupt lands. Cut short, nothing
        changed: the waiter is still first in the queue (woken, it waits on;
        its step does nothing), and the caller hands the slot over again.
        """
        if isinstance(waiting, _Waiter):
            waiting.woken.notify()
            waiting.granted = True
        else:
            waiting.admitted(self)
            waiting.granted_by = self
        self._in_flight = in_flight
        del self._waiters[waiting]

    def acquire(
        self, deadline: float | None = None, recipient: Recipient | None = None, through_shutdown: bool = False
    ) -> bool:
        """Admit one task, waiting while the limit is reached (unless exempt).

        ``deadline`` (a ``time.monotonic()`` value): give up then and return
        False, admitting nothing. On a pool's worker thread the wait lends the
        worker's place (taken outside this limiter's lock, which a backend's
        lock comes before), so that the tasks holding the slots can run.

        Slots go first come, first served: a call that finds others waiting
        queues behind them, and a slot freed is handed to the oldest waiter
        (a blocked call or a deferred admission, :meth:`acquire_or_defer`).

        ``recipient``: what the task is for (a group). A wait ends with its
        refusal where it stops taking tasks first, or as the slot comes (the
        slot goes back): the submission makes no task. A call that finds a
        slot free at once does not ask it (the submission checked it already).

        ``through_shutdown``: the task goes to a pool that ``mp.shutdown()``
        leaves running (an ``mp.Executor``'s): the wait goes on through the
        shutdown (:meth:`close`), before or as it comes, until a slot is freed.

        Cancellation: inside a task the wait is a cancellation point
        (``CancellationPoint``): the task's cancel or timeout wakes it, and it
        raises what ``check_cancelled()`` raises there, admitting nothing. A
        task that never waited is not checked: the call stays one lock round.

        Raises:
            ShutdownError: the library was shut down while this call waited, or
                before it (not ``through_shutdown``).
            TaskCancelledError: the task this runs in was cancelled while it waited.
            TaskTimeoutError: the task this runs in timed out while it waited.
            RuntimeError: on a thread whose event loop runs, the tasks holding
                every slot run coroutines on that loop, which this wait would
                block: a ``"sync"`` task's, started there as it was submitted
                (an ``async def`` function) or run in place here (a plain
                function that returned one).
            Exception: ``recipient``'s refusal (``_refuse_waiting()``): it
                stopped taking tasks while this call waited.
        """
        counted = False
        try:
            with self._lock:
                limit = self.limit
                if limit is None or (self._in_flight < limit and not self._waiters) or self._nested():
                    self._in_flight += 1
                    counted = True
                    return True
        except BaseException:  # a Ctrl-C as the lock was let go, the slot counted: it goes back
            if counted:
                self.release()
            raise
        task = current_task()
        waiter = _Waiter(self._lock, through_shutdown)
        loop = running_loop()  # a group's own limit, waited for on a loop's thread: see _run_held_on_loop
        admitted = False
        try:
            try:
                if recipient is not None:  # told first: a stop after its check below wakes this wait
                    recipient._slot_wait_begins(self)
                with (
                    CancellationPoint(task, _Waiter.wake, waiter),
                    BlockingWait(),
                    nullcontext() if loop is None else _held_on_loop.listening(loop, waiter.wake),
                    self._lock,
                ):
                    limit = self.limit
                    if limit is None or (self._in_flight < limit and not self._waiters):  # freed meanwhile
                        self._in_flight += 1
                        admitted = True
                    else:
                        try:
                            self._waiters[waiter] = None
                            admitted = self._wait_locked(waiter, task, deadline, recipient, loop)
                        finally:  # a slot handed over as the wait raised is passed on below
                            admitted = waiter.granted
                            if not admitted:
                                # Off the queue here, not in a function of its own: a Ctrl-C landing
                                # as that was entered left the waiter queued, and the next slot freed
                                # went to it, held by nobody.
                                try:
                                    del self._waiters[waiter]
                                except KeyError:  # close() emptied it already
                                    pass
                    if not admitted:
                        return False
            finally:
                if recipient is not None:
                    recipient._slot_wait_ends(self)
            if recipient is not None:  # after the wait's end is told: stopped before, the slot goes back, no task
                recipient._refuse_waiting()
        except BaseException:
            if admitted:  # stopped as the slot came: the submission raises, and the slot goes back
                self.release()
            raise
        return True

    def _wait_locked(
        self, waiter: _Waiter, task: Any, deadline: float | None, recipient: Recipient | None, loop: Any
    ) -> bool:
        """Wait, queued, until ``waiter`` is handed a slot (True) or ``deadline`` passes (False); under the lock.

        ``loop``: the one running on this thread, if any (see :meth:`_run_held_on_loop`).

        Raises what ends the wait first: ``ShutdownError``, the task's stop,
        the recipient's refusal (each waking only this waiter), the
        ``RuntimeError`` of :meth:`_refuse_to_block_their_loop`.
        """
        if self._closed and not waiter.through_shutdown:  # shut down before this call, which never waited: its refusal says so
            raise ShutdownError(_SHUT_DOWN_BEFORE)
        if loop is not None:  # tasks started on this loop before the wait may hold every slot
            self._lock.release()
            try:
                self._refuse_to_block_their_loop(loop, recipient)
            finally:
                self._lock.acquire()
        while not waiter.granted:
            # shut_out: closed, maybe reopened before this thread ran again
            if waiter.shut_out or (self._closed and not waiter.through_shutdown):
                raise ShutdownError(_SHUT_DOWN_WHILE_WAITING)
            if task is not None:  # checked under the lock Waiter.wake takes: no stop goes unseen
                task._raise_if_stopped()
            if recipient is not None:  # so is the recipient's stop (wake_waiters)
                recipient._refuse_waiting()
            if loop is not None and self._run_held_on_loop(loop, recipient):
                continue
            if deadline is None:
                _interruptible.wait(waiter.woken, None)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            _interruptible.wait(waiter.woken, remaining)
        return True

    def _run_held_on_loop(self, loop: Any, recipient: Recipient | None) -> bool:
        """Run, in the place of ``loop`` (this thread's, running), a ``"sync"`` task admitted to run here; whether one ran.

        Such a task may hold the slot this call waits for (a group's submit
        whose task waits for its function's slot holds its group slot), and
        the loop, which this wait blocks, would have run it (``_held_on_loop``).
        Run with this limiter's lock released, taken back after: its end
        releases a slot. Looked for under the lock: a task admitted after the
        look wakes the wait (``_Waiter.wake``, which takes the lock).
        ``recipient``: the wait's (:meth:`_refuse_to_block_their_loop`).
        """
        if not _held_on_loop.has_ready(loop):
            return False
        self._lock.release()
        try:
            _held_on_loop.run_one(loop)
            self._refuse_to_block_their_loop(loop, recipient)
        finally:
            self._lock.acquire()
        return True

    def _refuse_to_block_their_loop(self, loop: Any, recipient: Recipient | None) -> None:
        """Raise ``RuntimeError`` where the tasks holding this limit's slots whose coroutines run on ``loop`` (this thread's) are as many as the limit.

        Run in place here, a plain function that returned a coroutine started
        it on ``loop``, which this wait blocks: its task holds its slot until
        the loop runs it, so no slot could come, and the wait (a group's
        ``submit`` waiting for its own slot) ran out its whole timeout, or
        lasted for good, where every other wait that runs such a task in place
        refuses at once (``AsyncHandle._refuse_to_block_a_loop``). A task
        holds a slot of a function's limit, or the global one, in its
        ``_permits``; of a group's, as one of the group's tasks, which
        ``recipient``, the group waited for, gives (``_slot_holders``). Not
        by its context's mark (:func:`holding_a_slot`): every task made
        inside a group's task carries it, a plain call's too, and holds no
        slot of the group; counted, they refused a wait that a slot held
        elsewhere, freed from another thread, would have ended. Looked at
        as the wait begins (a task's coroutine started on the loop at its
        submit holds its slot as well) and after each task run in place.
        """
        limit = self.limit
        if limit is None or not on_callers_loops:
            return
        holders = []
        own: Container[Any] | None = None  # the recipient's, asked once a task on the loop holds no permit of this
        for task, on in list(on_callers_loops.items()):  # (a copy: another thread may take an entry meanwhile)
            if on.fail is not None or on.loop() is not loop or task._state >= SUCCEEDED:
                continue  # held for its slots, or of another loop, or ended
            if self in task._permits:
                holders.append(task)
            elif recipient is not None:
                if own is None:
                    own = recipient._slot_holders(self)
                if task in own:
                    holders.append(task)
        if holders and len(holders) >= limit:
            task = holders[0]
            raise RuntimeError(
                f"task {task._id} ({task.name}) holds a slot of the limit this submission waits for and "
                "runs a coroutine on this thread's event loop; "
                f"{len(holders)} such task(s) hold all {limit} slot(s), and this wait blocks the loop "
                "that alone can end them. Await their handles before submitting more, or submit "
                "from another thread"
            )

    def limit_here(self) -> int | None:
        """The limit a submission from the code running now is held to: ``None`` where there is none, or where it is admitted over it.

        A map sizes itself by it: it can run no more chunks at once than this.
        """
        limit = self.limit
        return None if limit is None or self._nested() else limit

    def wake_waiters(self) -> None:
        """Wake every submission waiting for a slot here, each to check what ends its wait (a recipient's stop)."""
        with self._lock:
            for waiting in self._waiters:
                if isinstance(waiting, _Waiter):
                    waiting.woken.notify()

    def _nested(self) -> bool:
        """Whether this submission comes from a task this limit admits over it (see the module docstring).

        Asked only where the submission would otherwise wait: reading the
        thread's task and context is not worth it below the limit.
        """
        if self._exempt_tasks:
            return current_task() is not None
        return self in _slots_held.get()

    def acquire_or_defer(self, waiting: PendingAdmission) -> bool:
        """Admit one task now and return True, or queue ``waiting`` and return False.

        A queued admission is told with ``waiting.admitted(self)`` as a slot is
        handed to it (``granted_by`` says once it is its own, counted already),
        or ``waiting.refused()`` at shutdown.
        It queues behind any call already waiting, blocked or deferred (first come,
        first served).

        Raises:
            ShutdownError: the library is shut down and the limit is reached
                (unless ``waiting.through_shutdown``, as :meth:`acquire` has it).
        """
        with self._lock:
            if self.limit is None or (self._in_flight < self.limit and not self._waiters) or self._nested():
                self._in_flight += 1
                return True
            if self._closed and not waiting.through_shutdown:
                raise ShutdownError(_SHUT_DOWN_WHILE_WAITING)
            self._waiters[waiting] = None
            return False

    def release(self) -> None:
        """One admitted task ended; its slot is handed to the oldest waiter, if any, still counted.

        The waiter is a blocked call, woken alone, or a deferred admission.
        Handed over, not freed: a caller that comes before the woken thread
        runs (the one that released, asking again) finds the limit reached and
        queues behind it.

        Called under a backend's lock: a deferred admission only schedules the
        rest of its work (``admitted()`` never takes a backend lock).

        Interrupted (Ctrl-C), it hands the slot over all the same, then raises.
        """
        with self._lock:
            waiters = self._waiters
            if not waiters or (self.limit is not None and self._in_flight > self.limit):
                self._in_flight -= 1
                if self._free_waiters and self._in_flight <= 0:
                    _interruptible.wake(self._free_waiters)
                return
            for waiting in waiters:  # the oldest: the slot passes on to it, still counted
                break
            try:
                self._hand_over_locked(waiting, self._in_flight)
            except BaseException:
                if waiting in waiters:  # cut short: nothing is its own yet
                    self._hand_over_locked(waiting, self._in_flight)
                raise

    def wait_free(self, timeout: float | None) -> bool:
        """Block until no slot is taken here, or ``timeout`` seconds pass (``None``: no end); return whether none is.

        A slot is taken from the admission of a call to the end of its task: a
        call handed one as a task ended (:meth:`release`) holds it before its
        task exists, and no pool counts that task yet. Exit waits so for such
        a call on a daemon thread: it waited for the pools alone, which were
        idle just then, and the call's task was lost.
        """
        return _interruptible.wait_until(self._lock, lambda: self._in_flight <= 0, self._free_waiters, timeout)

    def close(self) -> None:
        """Make every waiting and future blocked submission raise ``ShutdownError``, but those ``through_shutdown``.

        Deferred admissions end their tasks with ``ShutdownError``, as a blocked
        submission would have raised it. Interrupted (Ctrl-C), it shuts out and
        refuses every waiter all the same, then raises.
        """
        refused: list[PendingAdmission] = []
        try:
            with self._lock:
                self._closed = True
                try:
                    self._shut_out_locked(refused)
                except BaseException:
                    self._shut_out_locked(refused)  # from the start again, unless the queue is empty already
                    raise
            for deferred in refused:
                deferred.refused()
        except BaseException:
            for deferred in refused:
                deferred.refused()  # again, for those it had not reached: a task ended already stays as it ended
            raise

    def _shut_out_locked(self, refused: list[PendingAdmission]) -> None:
        """Take every waiter off the queue: wake the blocked calls to raise, add the deferred admissions to ``refused``.

        Off the queue, all of them: a slot freed from now on is not handed to
        a waiter about to raise. The queue is replaced last: cut short, a call
        again does it all again (a call woken twice, or an admission refused
        twice, ends once). Those ``through_shutdown`` stay queued, in order.
        """
        waiters = self._waiters
        kept: OrderedDict[_Waiter | PendingAdmission, None] = OrderedDict()
        for waiting in waiters:
            if waiting.through_shutdown:
                kept[waiting] = None
            elif isinstance(waiting, _Waiter):
                waiting.shut_out = True  # off the queue: it must raise, even if reopen() comes first
                waiting.woken.notify()
            else:
                refused.append(waiting)
        self._waiters = kept

    def reopen(self) -> None:
        with self._lock:
            self._closed = False

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0  # the parent's tasks do not exist in the child
        self._waiters = OrderedDict()
        self._free_waiters = []


class _Waiter:
    """A call blocked in :meth:`Limiter.acquire`, queued: woken alone, when handed a slot or told to look again."""

    __slots__ = ("granted", "shut_out", "through_shutdown", "woken")

    def __init__(self, lock: threading.Lock, through_shutdown: bool) -> None:
        self.granted = False  # set under the limiter's lock as it leaves the queue: the slot is this call's, counted
        self.shut_out = False  # set under the limiter's lock by close(), which took it off the queue
        self.through_shutdown = through_shutdown  # close() leaves it waiting (Limiter.acquire)
        self.woken = threading.Condition(lock)

    def wake(self) -> None:
        """Its task was stopped while it waited: wake it to check (``CancellationPoint``)."""
        with self.woken:
            self.woken.notify()


@contextmanager
def holding_a_slot(limiter: Limiter) -> Iterator[None]:
    """Around the call that makes a task admitted through ``limiter``: mark it as one holding a slot.

    A handle takes a copy of the submitter's context as it is made, so the
    mark reaches that task and everything it submits, and nothing else; the
    submitter's own context is put back as it was.
    """
    held = _slots_held.get()
    if limiter in held:  # a task that holds a slot made this one: marked already
        yield
        return
    token = _slots_held.set((*held, limiter))
    try:
        yield
    finally:
        _slots_held.reset(token)


class PendingAdmission:
    """A task accepted on a thread whose event loop runs, waiting for its slots there.

    The backend holds the task (counted, not startable) until every limit that
    applies admitted it; then it is queued to run. Each step after the first
    runs on the admission thread, never under a backend's lock. (On the
    submitter's loop, it never ran while that loop's thread blocked on the
    task: leaving a ``with mp.Executor()`` block there waited for good.) A
    task cancelled meanwhile hands each slot it is given straight back.
    """

    __slots__ = ("_backend", "_handle", "_limiters", "_loop", "granted_by", "through_shutdown")

    def __init__(
        self,
        handle: AsyncHandle[Any],
        backend: Backend,
        limiters: list[Limiter],
        loop: Any,
    ) -> None:
        self._handle = handle
        self._backend = backend
        self._limiters = limiters
        self._loop = loop
        # The limiter whose slot is this task's, not yet taken by its next step: set under
        # that limiter's lock as the task leaves its queue, and cleared under it by that step.
        self.granted_by: Limiter | None = None
        # For a pool that makeparallel.shutdown() leaves running (an mp.Executor's): it waits on through it.
        self.through_shutdown = backend.outlives_shutdown

    def start(self) -> None:
        """Take every slot free now; queue for the first that is not."""
        while self._limiters:
            try:
                if not self._limiters[0].acquire_or_defer(self):
                    # Told of the task's end from now on; at once if it ended already.
                    self._handle._add_own_done_callback(self._ended)
                    return
            except ShutdownError as error:
                self._fail(error)
                return
            if not self._keep(self._limiters.pop(0)):
                return
        self._backend.release_held(self._handle)

    def _ended(self, _: object) -> None:
        """The task ended (a done-callback): if it still waits for a slot, it leaves the queue.

        Cancelled, or ended by its loop's close, an unadmitted task stayed
        queued until a slot reached it, only to be handed straight back: the
        queue kept the task (and its loop) meanwhile, and every call behind
        it waited for that detour. A task admitted under every limit is in
        no queue: nothing is looked up then (a task run to its end comes
        here too). One handed its slot already gives it back in its next step.
        """
        limiters = self._limiters
        if not limiters:
            return
        limiter = limiters[0]
        with limiter._lock:
            try:
                del limiter._waiters[self]
            except KeyError:  # handed a slot meanwhile (its next step gives it back), or shut out
                pass

    def admitted(self, limiter: Limiter) -> None:
        """``limiter``, the first one, is giving this task a slot: queue the next step (called under its lock, and a backend's).

        That step takes the slot once ``limiter`` made it the task's own
        (``granted_by``). A hand-over cut short by Ctrl-C is made again and
        queues the step again: it goes on once per slot.
        """
        step = functools.partial(self._continue, limiter)
        try:
            _hand_on(step)
        except RuntimeError:  # no thread could start: the submitter's loop carries on, if it runs
            self._loop.call_soon_threadsafe(step)

    def refused(self) -> None:
        """Shut down while waiting: the task ends with ``ShutdownError``."""
        self._fail(ShutdownError(_SHUT_DOWN_WHILE_WAITING))

    def _continue(self, limiter: Limiter) -> None:
        with limiter._lock:  # free once the hand-over that queued this step ended
            if self.granted_by is not limiter:
                return  # queued again by a hand-over cut short, and taken by the first step
            self.granted_by = None
        if self._keep(self._limiters.pop(0)):
            self.start()

    def _keep(self, limiter: Limiter) -> bool:
        """Record the slot on the task, or give it back if the task already ended."""
        handle = self._handle
        with self._backend._lock:
            alive = handle._state < SUCCEEDED
            if alive:
                handle._permits += (limiter,)
        if not alive:
            limiter.release()
        return alive

    def _fail(self, error: BaseException) -> None:
        handle = self._handle
        handle._ask_breaker(error)
        with self._backend._lock:
            if handle._state != PENDING:
                return
            announce = handle._settle_locked(FAILED, error)
        handle._after_settle(announce)


# The admission thread's queue of steps; None in it tells the thread to leave (end_thread).
_steps: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
# The admission thread's flag that it ended, once one started; None before, and once told to end.
# Not Thread.is_alive(): a Ctrl-C inside it (CPython 3.11's bpo-45274 handling) marked the running
# thread as stopped, and a second one started, which ran steps beside it, out of turn.
_admitter: threading.Event | None = None
_thread: threading.Thread | None = None  # that thread, for a shutdown to join (end_thread)
_admitter_lock = threading.Lock()  # taken under a backend's lock, and nothing is taken under it
# Seconds a _hand_on interrupted inside Thread.start() waits to learn whether the thread began
# (as the thread pool's _spawn does): one that did says so at once.
_BEGINS_WITHIN = 0.5
_log = logging.getLogger("makeparallel")


def _hand_on(step: Callable[[], None]) -> None:
    """Run ``step`` on the admission thread, one step at a time, in order; start the thread if need be.

    A thread started while one told to end still runs its last steps
    (:func:`end_thread`) runs its own once that one ended: in turn still.

    Raises:
        RuntimeError: no thread can start (the process limit counts threads).
    """
    global _admitter, _thread
    with _admitter_lock:
        if _admitter is None or _admitter.is_set():
            began, ended = threading.Event(), threading.Event()
            thread = threading.Thread(
                target=_admit_in_turn, args=(_steps, began, ended, _thread), name="makeparallel-admission", daemon=True
            )
            try:
                thread.start()
            except RuntimeError:
                raise
            except BaseException:
                # A Ctrl-C inside start() may land once the thread runs (start() then waits for it
                # to begin): unnoted, it ran on beside the one the hand-over made again started.
                if began.wait(_BEGINS_WITHIN):
                    _admitter, _thread = ended, thread
                raise
            _admitter, _thread = ended, thread
        _steps.put(step)


def end_thread(timeout: float) -> None:
    """Have the admission thread end once it ran the steps queued, and join it, for at most ``timeout`` seconds (a shutdown's).

    Left to wait for steps for good, it outlived ``shutdown()``: a thread-leak
    check saw it. The next step starts a new one, with a queue of its own,
    which runs once this one ended. Not joined from the thread itself (a
    shutdown in a step). A Ctrl-C ends the join.
    """
    global _admitter, _steps
    with _admitter_lock:
        thread = _thread
        if _admitter is None or _admitter.is_set() or thread is None:
            return
        _steps.put(None)
        _steps = queue.SimpleQueue()
        _admitter = None
    if thread is not threading.current_thread():
        _interruptible.join(thread, timeout)


def _admit_in_turn(
    steps: queue.SimpleQueue[Callable[[], None] | None],
    began: threading.Event,
    ended: threading.Event,
    after: threading.Thread | None,
) -> None:
    began.set()
    try:
        if after is not None and after.is_alive():  # told to end, it may still run its last steps: in turn
            after.join()
        while True:
            step = steps.get()
            if step is None:  # told to end (end_thread): every step queued before ran
                return
            try:
                step()
            except BaseException:  # a fault of the library's own: the admissions after it must still go on
                try:
                    _log.critical("makeparallel: a deferred admission failed; its task may never start", exc_info=True)
                except BaseException:  # logging's last resort raises where sys.stderr was closed
                    pass
            # Let go before the next wait: kept until the next step came, the last one (a
            # partial of its PendingAdmission) kept its task, ended, and the task's arguments.
            del step
    finally:
        ended.set()


def _reset_all_after_fork() -> None:
    global _admitter, _admitter_lock, _steps, _thread
    _admitter, _admitter_lock, _steps, _thread = None, threading.Lock(), queue.SimpleQueue(), None
    for limiter in all_limiters():
        limiter._reset_after_fork()


_at_fork_in_child(_reset_all_after_fork)
