"""Admission is first come, first served: a freed slot goes to the oldest waiter.

Blocked submissions and deferred admissions (tasks submitted on a running event
loop) wait in one queue. Without it a thread that freed a slot and asked again
took it back before the thread it woke could run, and deferred admissions went
before every blocked thread: either kind of caller could starve the other for
good. These tests drive a ``Limiter`` directly: who waits is seen by a spy on
the wait itself, who got a slot by a recorded order, and the slot is freed by
hand, one at a time.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import makeparallel as mp
from makeparallel import _admission, _interruptible, _task_context
from makeparallel._admission import Limiter, PendingAdmission
from makeparallel._states import CANCELLED, PENDING

pytestmark = pytest.mark.timeout(60)

WAIT = 30  # seconds, for what must happen (generous: a loaded machine)


class Record:
    """Names in the order things happened, and a wait for the next one."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.names: list[str] = []

    def add(self, name: str) -> None:
        with self._changed:
            self.names.append(name)
            self._changed.notify_all()

    def wait_for(self, holds: Any) -> None:
        """Wait until ``holds(names)``."""
        with self._changed:
            assert self._changed.wait_for(lambda: holds(self.names), WAIT), self.names


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> Iterator[Record]:
    """The name of each thread as it starts to wait for a slot (again), in order."""
    record = Record()
    real_wait = _interruptible.wait

    def wait(condition: threading.Condition, timeout: float | None) -> None:
        record.add(threading.current_thread().name)
        real_wait(condition, timeout)

    monkeypatch.setattr(_interruptible, "wait", wait)
    yield record


class Acquirer:
    """Asks ``limiter`` for a slot on a thread of its own, named ``name``; records what came of it."""

    def __init__(
        self, limiter: Limiter, name: str, got: Record, task: Any = None, recipient: Any = None, patience: float = WAIT
    ) -> None:
        """``patience``: seconds until the call gives up."""
        self._limiter, self._got, self._task, self._recipient = limiter, got, task, recipient
        self._patience = patience
        self.returned = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name)
        self._thread.start()

    def _run(self) -> None:
        name = self._thread.name
        if self._task is not None:
            _task_context._local.task = self._task
        try:
            self._got.add(name if self._limiter.acquire(time.monotonic() + self._patience, self._recipient) else f"{name}: none")
        except BaseException as error:
            self._got.add(f"{name}: {type(error).__name__}")
        finally:
            if self._task is not None:
                del _task_context._local.task
            self.returned.set()

    def join(self) -> None:
        self._thread.join(WAIT)
        assert not self._thread.is_alive()


class Deferred:
    """Stands for a task submitted on a running event loop, waiting in the queue for its slot."""

    through_shutdown = False  # (a task of a pool that a shutdown closes)

    def __init__(self, name: str, got: Record) -> None:
        self.name = name
        self._got = got

    def admitted(self, limiter: Limiter) -> None:
        self._got.add(self.name)

    def refused(self) -> None:
        self._got.add(f"{self.name}: refused")


def _queue(limiter: Limiter, kind: str, name: str, got: Record, waits: Record, **options: Any) -> Acquirer | None:
    """Queue a waiter of ``kind`` ("thread" or "deferred") and return once it waits."""
    if kind == "deferred":
        assert not limiter.acquire_or_defer(Deferred(name, got))  # type: ignore[arg-type]
        return None
    acquirer = Acquirer(limiter, name, got, **options)
    waits.wait_for(lambda names: name in names)
    return acquirer


def test_a_slot_goes_to_the_oldest_blocked_thread_however_often_its_wait_woke(waits: Record) -> None:
    # The main thread waits in slices (so that Ctrl-C gets through): each slice it
    # waited anew, behind a thread that came later, which then took the slot.
    limiter = Limiter(1)
    assert limiter.acquire()
    got = Record()
    later: list[Acquirer] = []

    def free_slots() -> None:
        waits.wait_for(lambda names: "MainThread" in names)
        later.append(_queue(limiter, "thread", "later", got, waits))  # type: ignore[arg-type]
        # The main thread's wait woke, and waited again, since the later one's began.
        waits.wait_for(lambda names: "MainThread" in names[names.index("later") :])
        limiter.release()
        got.wait_for(lambda names: len(names) == 1)
        limiter.release()  # whoever got the first slot ended: the other gets its turn

    helper = threading.Thread(target=free_slots)
    helper.start()
    got.add("MainThread" if limiter.acquire(time.monotonic() + WAIT) else "MainThread: none")
    helper.join(WAIT)
    assert not helper.is_alive()
    later[0].join()
    assert got.names == ["MainThread", "later"]
    limiter.release()
    assert limiter.in_flight == 0


@pytest.mark.parametrize(
    "kinds", [("thread", "deferred", "thread"), ("deferred", "thread", "deferred")], ids="-then-".join
)
def test_blocked_threads_and_deferred_admissions_get_slots_in_the_order_they_came(
    kinds: tuple[str, ...], waits: Record
) -> None:
    # Deferred admissions went first: a map on an event loop, which keeps adding
    # them, kept another thread's call waiting for as long as it ran.
    limiter = Limiter(1)
    assert limiter.acquire()
    got = Record()
    names = [f"{kind}-{i}" for i, kind in enumerate(kinds)]
    threads = [_queue(limiter, kind, name, got, waits) for kind, name in zip(kinds, names)]
    for turn in range(1, len(kinds) + 1):
        limiter.release()  # the slot's holder ended: the next in line holds it now
        got.wait_for(lambda seen, turn=turn: len(seen) >= turn)
    assert got.names == names
    limiter.release()
    assert limiter.in_flight == 0
    for thread in threads:
        if thread is not None:
            thread.join()


def test_a_thread_that_frees_a_slot_and_asks_again_queues_behind_the_waiter(waits: Record) -> None:
    # The freed slot was free for whoever took the lock first: almost always the
    # thread that freed it, asking again before the waiter it woke could run.
    # A long switch interval keeps that thread running, as it mostly does anyway.
    limiter = Limiter(1)
    assert limiter.acquire()
    got = Record()
    waiter = _queue(limiter, "thread", "waiter", got, waits)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(WAIT)
    try:
        limiter.release()
        again = limiter.acquire(time.monotonic())  # no wait: a slot now, or none
    finally:
        sys.setswitchinterval(interval)
    assert not again, "the thread that freed the slot took it back from the one waiting for it"
    got.wait_for(lambda names: names == ["waiter"])
    assert waiter is not None
    waiter.join()
    limiter.release()
    assert limiter.in_flight == 0


class _StoppedAsTheSlotComes:
    """The task a waiter runs in, stopped by the time its slot comes: it checks thrice, the third raises."""

    def __init__(self) -> None:
        self._checks = 0

    def _raise_if_stopped(self) -> None:
        self._checks += 1
        if self._checks > 2:
            raise mp.TaskCancelledError("stopped as the slot came")


class _EndsAsTheSlotComes:
    """A group that stops taking tasks as the wait for its slot ends."""

    def __init__(self) -> None:
        self._ended = False

    def _slot_wait_begins(self, limiter: Limiter) -> None:
        pass

    def _slot_wait_ends(self, limiter: Limiter) -> None:
        self._ended = True

    def _refuse_waiting(self) -> None:
        if self._ended:
            raise mp.ShutdownError("the group ended")


@pytest.mark.parametrize("why", ["task stopped", "group ended"])
def test_a_waiter_that_gives_up_as_its_slot_comes_passes_it_to_the_next(why: str, waits: Record) -> None:
    limiter = Limiter(1, exempt_tasks=False)
    assert limiter.acquire()
    got = Record()
    if why == "task stopped":
        error, options = "TaskCancelledError", {"task": _StoppedAsTheSlotComes()}
    else:
        error, options = "ShutdownError", {"recipient": _EndsAsTheSlotComes()}
    # Patient enough to outlast the waits below: it gives up as its slot comes, not at its deadline.
    giving_up = _queue(limiter, "thread", "giving-up", got, waits, patience=10 * WAIT, **options)
    _queue(limiter, "deferred", "deferred", got, waits)
    last = _queue(limiter, "thread", "last", got, waits)
    try:
        limiter.release()
        got.wait_for(lambda names: len(names) >= 2)
        assert sorted(got.names) == sorted(["deferred", f"giving-up: {error}"])  # either order: one thread tells both
        assert limiter.in_flight == 1
        limiter.release()
        got.wait_for(lambda names: len(names) >= 3)
        assert got.names[2] == "last"
        limiter.release()
        assert limiter.in_flight == 0
    finally:
        limiter.close()  # failed, it ends the wait of a call left waiting
    for thread in (giving_up, last):
        assert thread is not None
        thread.join()


def test_a_waiter_interrupted_as_its_slot_comes_passes_it_to_the_next(
    waits: Record, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C (any BaseException) lands as the wait ends. The woken waiter left with
    # the notice: the next one was never woken, though the slot was free.
    spied_wait = _interruptible.wait

    def wait(condition: threading.Condition, timeout: float | None) -> None:
        spied_wait(condition, timeout)
        if threading.current_thread().name == "interrupted":
            raise KeyboardInterrupt

    monkeypatch.setattr(_interruptible, "wait", wait)
    limiter = Limiter(1)
    assert limiter.acquire()
    got = Record()
    interrupted = _queue(limiter, "thread", "interrupted", got, waits)
    last = _queue(limiter, "thread", "last", got, waits, patience=10 * WAIT)  # outlasts the wait below
    try:
        limiter.release()
        got.wait_for(lambda names: len(names) >= 2)
        assert got.names == ["interrupted: KeyboardInterrupt", "last"]
        assert limiter.in_flight == 1
        limiter.release()
        assert limiter.in_flight == 0
    finally:
        limiter.close()  # failed, it ends the wait of a call left waiting
    for thread in (interrupted, last):
        assert thread is not None
        thread.join()


def test_a_waiter_past_its_deadline_leaves_the_queue(waits: Record) -> None:
    limiter = Limiter(1)
    assert limiter.acquire()
    got = Record()
    late = Acquirer(limiter, "late", got)
    waits.wait_for(lambda names: "late" in names)
    assert not limiter.acquire(time.monotonic() + 0.05)  # queued behind "late", then gave up
    limiter.release()
    got.wait_for(lambda names: names == ["late"])
    late.join()
    limiter.release()
    assert limiter.in_flight == 0
    assert limiter.acquire(time.monotonic())  # nobody waits: admitted at once


def test_raising_the_limit_hands_the_new_slots_to_the_oldest_waiters(waits: Record) -> None:
    limiter = Limiter(1)
    assert limiter.acquire()
    got = Record()
    first = _queue(limiter, "thread", "first", got, waits)
    second = _queue(limiter, "thread", "second", got, waits)
    _queue(limiter, "deferred", "deferred", got, waits)
    limiter.set_limit(2)
    got.wait_for(lambda names: len(names) >= 1)
    assert got.names == ["first"]
    limiter.set_limit(3)
    got.wait_for(lambda names: len(names) >= 2)
    assert got.names == ["first", "second"]
    limiter.set_limit(None)
    got.wait_for(lambda names: len(names) >= 3)
    assert got.names == ["first", "second", "deferred"]
    for thread in (first, second):
        assert thread is not None
        thread.join()
    for _ in range(4):
        limiter.release()
    assert limiter.in_flight == 0


def test_shutdown_refuses_every_waiter_and_leaves_the_queue_empty(waits: Record) -> None:
    limiter = Limiter(1)
    assert limiter.acquire()
    got = Record()
    blocked = _queue(limiter, "thread", "blocked", got, waits)
    _queue(limiter, "deferred", "deferred", got, waits)
    limiter.close()
    try:
        got.wait_for(lambda names: len(names) >= 2)
        assert sorted(got.names) == ["blocked: ShutdownError", "deferred: refused"]
        assert blocked is not None
        blocked.join()
        limiter.release()
        assert limiter.in_flight == 0
    finally:
        limiter.reopen()
    assert limiter.acquire(time.monotonic())  # no refused waiter is left to take the slot
    limiter.release()


def test_a_waiter_woken_by_shutdown_raises_even_if_it_runs_only_after_the_reset(
    waits: Record, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``close()`` took it off the queue: waiting on after ``reopen()``, nothing would ever hand it a slot."""
    limiter = Limiter(1)
    assert limiter.acquire()
    woke, go = threading.Event(), threading.Event()
    spied_wait = _interruptible.wait

    def wait_then_stall(condition: threading.Condition, timeout: float | None) -> None:
        spied_wait(condition, timeout)
        woke.set()  # the thread woke, but does not run on before the reset (a busy machine)
        condition.release()
        try:
            assert go.wait(WAIT)
        finally:
            condition.acquire()

    monkeypatch.setattr(_interruptible, "wait", wait_then_stall)
    got = Record()
    blocked = _queue(limiter, "thread", "blocked", got, waits)
    limiter.close()
    assert woke.wait(WAIT)
    limiter.reopen()
    go.set()
    limiter.release()  # a slot free: not a reason to wait on
    got.wait_for(lambda names: len(names) >= 1)
    assert got.names == ["blocked: ShutdownError"]
    assert blocked is not None
    blocked.join()
    assert limiter.in_flight == 0
    assert limiter.acquire(time.monotonic())
    limiter.release()


# -- Ctrl-C as slots are handed over ------------------------------------------------------
#
# Ctrl-C raises KeyboardInterrupt on the main thread as a function is entered or a built-in's
# call returns (CPython runs a pending signal's handler there), and the main thread frees slots
# too (a task's end on "sync", cancel(), shutdown). release() took the waiter off the queue, then
# granted it: interrupted between the two, the waiter never got the slot, which stayed counted,
# held by nobody, and every later call waited for it. So did set_limit's hand-overs, and close()
# interrupted in its loop left the waiters after that place queued, or never refused. Each
# operation is interrupted here at each such place in turn (a profile hook raises there), with
# real deferred admissions (their next step runs on the admission thread).


class InterruptAt:
    """A profile hook (``sys.setprofile``) that raises ``KeyboardInterrupt`` at the ``at``-th function entry or built-in return on its thread, once."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.places = 0

    def __call__(self, frame: object, event: str, arg: object) -> None:
        if event in ("call", "c_return"):
            self.places += 1
            if self.places == self.at:
                sys.setprofile(None)
                raise KeyboardInterrupt


def interrupted(at: int, operation: Callable[[], object]) -> bool:
    """Call ``operation()``, interrupted at its ``at``-th place (:class:`InterruptAt`); whether it was.

    The interrupt must come out of the call: an operation that swallowed it fails the test.
    """
    hook = InterruptAt(at)
    sys.setprofile(hook)
    try:
        operation()
    except KeyboardInterrupt:
        return True
    finally:
        sys.setprofile(None)
    assert hook.places < at, f"the interrupt at place {at} did not come out of the call"
    return False


def at_each_place(scenario: Callable[[int], bool]) -> None:
    """Run ``scenario(at)`` for ``at`` = 1, 2, ... until the operation in it ran without an interrupt."""
    at = 1
    while scenario(at):
        at += 1
    assert at > 2, f"only {at - 1} place was interrupted"


class HeldBackend:
    """What a deferred admission uses of its backend: a lock, and ``release_held``, recorded."""

    outlives_shutdown = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.released: list[Any] = []

    def release_held(self, handle: Any) -> None:
        self.released.append(handle)
        handle.done_callbacks = []  # (see HeldHandle)


class HeldHandle:
    """What a deferred admission uses of its task's handle: its state, its permits, its settle, its done-callbacks."""

    def __init__(self) -> None:
        self._state = PENDING
        self._permits: tuple[Limiter, ...] = ()
        self.settled: list[str] = []
        # Dropped as the task ends or starts: the admission's own method holds this handle, and the
        # cycles left made the collector run at any call, where Ctrl-C landed (a WeakSet's removal).
        self.done_callbacks: list[Callable[[Any], object]] = []

    def _add_own_done_callback(self, fn: Callable[[Any], object]) -> None:
        self.done_callbacks.append(fn)

    def cancel(self) -> None:
        """End as a cancelled task ends: settled, then its done-callbacks told."""
        self._state = CANCELLED
        callbacks, self.done_callbacks = self.done_callbacks, []
        for fn in callbacks:
            fn(self)

    def _ask_breaker(self, error: BaseException) -> None:
        pass

    def _settle_locked(self, state: int, error: BaseException) -> None:
        self._state = state
        self.settled.append(type(error).__name__)
        self.done_callbacks = []

    def _after_settle(self, announce: object) -> None:
        pass


def _defer(limiter: Limiter) -> tuple[HeldHandle, HeldBackend]:
    """Queue a deferred admission (a task held on an event loop) for a slot of ``limiter``, whose limit is reached."""
    handle, backend = HeldHandle(), HeldBackend()
    PendingAdmission(handle, backend, [limiter], None).start()  # type: ignore[arg-type]
    assert handle in [getattr(waiting, "_handle", None) for waiting in limiter._waiters]
    return handle, backend


def _steps_ran() -> None:
    """Wait until every step queued on the admission thread so far ran (they run in turn, on one thread)."""
    done = threading.Event()
    _admission._hand_on(done.set)
    assert done.wait(WAIT)
    assert [thread.name for thread in threading.enumerate()].count("makeparallel-admission") == 1


def test_a_deferred_admission_whose_task_ends_leaves_the_queue_and_the_next_gets_the_slot() -> None:
    # A task that ended waiting for its slot stayed queued: the next slot freed was handed to it,
    # and reached the admission behind it only once its step on the admission thread gave it back.
    limiter = Limiter(1)
    assert limiter.acquire()
    ended, _ = _defer(limiter)
    waiting, backend = _defer(limiter)
    behind = list(limiter._waiters)[1]
    ended.cancel()
    assert [getattr(waiter, "_handle", None) for waiter in limiter._waiters] == [waiting]
    limiter.release()
    assert behind.granted_by is limiter and not limiter._waiters  # handed to it at once, no step between
    _steps_ran()
    assert backend.released == [waiting] and waiting._permits == (limiter,)
    assert limiter.in_flight == 1


def test_a_deferred_admission_whose_task_ended_as_its_slot_came_gives_the_slot_back() -> None:
    # Handed its slot, then ended before its next step took it: off the queue already, the end
    # finds nothing there to take off, and the step gives the slot back.
    limiter = Limiter(1)
    assert limiter.acquire()
    handle, backend = _defer(limiter)
    step_may_run = threading.Event()
    _admission._hand_on(lambda: step_may_run.wait(WAIT))  # its step, queued behind this, waits
    limiter.release()
    handle.cancel()
    step_may_run.set()
    _steps_ran()
    assert backend.released == [] and limiter.in_flight == 0 and not limiter._waiters


@pytest.mark.parametrize("kind", ["thread", "deferred"])
def test_a_release_interrupted_anywhere_still_hands_the_slot_to_the_waiter(kind: str, waits: Record) -> None:
    def scenario(at: int) -> bool:
        limiter = Limiter(1)
        assert limiter.acquire()
        got = Record()
        if kind == "thread":
            waiter = _queue(limiter, "thread", f"waiter-{at}", got, waits)
        else:
            handle, backend = _defer(limiter)
        try:
            was_interrupted = interrupted(at, limiter.release)
            if was_interrupted and at == 1:  # at its entry: it did nothing yet, and its caller holds the slot still
                assert len(limiter._waiters) == 1
                limiter.release()
            assert not limiter._waiters
            if kind == "thread":
                got.wait_for(lambda names: len(names) >= 1)
                assert got.names == [f"waiter-{at}"]
            else:
                _steps_ran()
                assert backend.released == [handle], f"interrupted at place {at}, the task was admitted {len(backend.released)} time(s)"
                assert handle._permits == (limiter,)
            assert limiter.in_flight == 1
            limiter.release()
            assert limiter.in_flight == 0
        finally:
            limiter.close()  # failed, it ends the wait of a call left waiting
        if kind == "thread":
            assert waiter is not None
            waiter.join()
        return was_interrupted

    at_each_place(scenario)


def test_raising_the_limit_interrupted_anywhere_still_hands_every_new_slot_to_the_oldest(waits: Record) -> None:
    def scenario(at: int) -> bool:
        limiter = Limiter(1)
        assert limiter.acquire()
        got = Record()
        first = _queue(limiter, "thread", f"first-{at}", got, waits)
        handle, backend = _defer(limiter)
        last = _queue(limiter, "thread", f"last-{at}", got, waits)
        try:
            was_interrupted = interrupted(at, functools.partial(limiter.set_limit, 3))
            if was_interrupted and at == 1:
                assert limiter.limit == 1
                limiter.set_limit(3)
            got.wait_for(lambda names: len(names) >= 1)
            _steps_ran()
            assert got.names == [f"first-{at}"]
            assert backend.released == [handle], f"interrupted at place {at}, the task was admitted {len(backend.released)} time(s)"
            assert len(limiter._waiters) == 1  # the last one: two slots came, for the two before it
            assert limiter.in_flight == 3
            limiter.set_limit(4)
            got.wait_for(lambda names: len(names) >= 2)
            assert got.names == [f"first-{at}", f"last-{at}"]
        finally:
            limiter.close()  # failed, it ends the wait of a call left waiting
        for thread in (first, last):
            assert thread is not None
            thread.join()
        for _ in range(4):
            limiter.release()
        assert limiter.in_flight == 0
        return was_interrupted

    at_each_place(scenario)


def test_a_shutdown_interrupted_anywhere_still_refuses_every_waiter(waits: Record) -> None:
    def scenario(at: int) -> bool:
        limiter = Limiter(1)
        assert limiter.acquire()
        got = Record()
        blocked = _queue(limiter, "thread", f"blocked-{at}", got, waits)
        handle, backend = _defer(limiter)
        try:
            was_interrupted = interrupted(at, limiter.close)
            if was_interrupted and at == 1:
                assert len(limiter._waiters) == 2
                limiter.close()
            assert not limiter._waiters
            got.wait_for(lambda names: len(names) >= 1)
            assert got.names == [f"blocked-{at}: ShutdownError"]
            assert handle.settled == ["ShutdownError"]  # once
            assert not backend.released
            limiter.release()
            assert limiter.in_flight == 0
        finally:
            limiter.close()  # failed, it ends the wait of a call left waiting
            limiter.reopen()
        assert blocked is not None
        blocked.join()
        return was_interrupted

    at_each_place(scenario)


def test_a_waiter_interrupted_anywhere_after_its_slot_came_passes_it_to_the_next(
    waits: Record, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its acquire() gives the slot back as the interrupt goes through it (a finally).
    interrupt_at: dict[str, int] = {}  # the place to interrupt, by the name of the thread that waits
    spied_wait = _interruptible.wait

    def wait(condition: threading.Condition, timeout: float | None) -> None:
        spied_wait(condition, timeout)
        at = interrupt_at.get(threading.current_thread().name)
        if at is not None:
            sys.setprofile(InterruptAt(at))  # from here on, on this thread, until its acquire() returns

    monkeypatch.setattr(_interruptible, "wait", wait)

    def scenario(at: int) -> bool:
        limiter = Limiter(1)
        assert limiter.acquire()
        got = Record()
        name = f"interrupted-{at}"
        interrupt_at[name] = at

        def acquires() -> None:
            try:
                outcome = "slot" if limiter.acquire(time.monotonic() + WAIT) else "none"
            except KeyboardInterrupt:
                outcome = "KeyboardInterrupt"
            finally:
                sys.setprofile(None)
            got.add(f"{name}: {outcome}")

        interrupted_thread = threading.Thread(target=acquires, name=name)
        interrupted_thread.start()
        waits.wait_for(lambda names: name in names)
        last = _queue(limiter, "thread", f"last-{at}", got, waits)
        limiter.release()
        got.wait_for(lambda names: len(names) >= 1)
        was_interrupted = got.names[0] == f"{name}: KeyboardInterrupt"
        if not was_interrupted:
            assert got.names == [f"{name}: slot"]
            limiter.release()
        got.wait_for(lambda names: len(names) >= 2)
        assert got.names[1] == f"last-{at}"
        assert limiter.in_flight == 1
        limiter.release()
        assert limiter.in_flight == 0
        interrupted_thread.join(WAIT)
        assert last is not None
        last.join()
        return was_interrupted

    at_each_place(scenario)


# A "sync" task held for its slot on an event loop is listed, once admitted, to run on that
# loop's thread: the loop's callback or a blocking wait there takes it and runs it. Ctrl-C there
# between taking it off the list and running it lost it: pending for good, its slot taken. Each
# place up to the task's code is interrupted in turn (an interrupt in its code, or in the end of
# its run, is a "sync" task's anywhere).


class InterruptBeforeCode(InterruptAt):
    """:class:`InterruptAt`, counting the places before ``code`` is entered only."""

    def __init__(self, at: int, code: object) -> None:
        super().__init__(at)
        self.code = code

    def __call__(self, frame: Any, event: str, arg: object) -> None:
        if event == "call" and frame.f_code is self.code:
            sys.setprofile(None)  # the task's code runs: no place after counts
            return
        super().__call__(frame, event, arg)


def test_a_held_sync_task_taken_to_run_on_its_loops_thread_is_never_lost_to_an_interrupt() -> None:
    import asyncio

    from makeparallel import _held_on_loop

    ran: list[int] = []

    def task(n: int) -> int:
        ran.append(n)
        return n

    f = mp.parallel(backend="sync", max_concurrent=1)(task)
    limiter = f._spec.limiter
    assert limiter is not None

    async def interrupted_as_it_is_taken(at: int) -> tuple[bool, mp.AsyncHandle[int]]:
        loop = asyncio.get_running_loop()
        assert limiter.acquire()
        handle = f(at)  # held: this holds the slot
        limiter.release()  # handed to it: admitted, on the admission thread, to run here
        deadline = time.monotonic() + WAIT
        while not _held_on_loop.has_ready(loop):
            assert time.monotonic() < deadline, "never admitted"
            threading.Event().wait(0.001)  # (the loop's thread: nothing else to run meanwhile)
        hook = InterruptBeforeCode(at, task.__code__)
        sys.setprofile(hook)
        try:
            _held_on_loop.run_one(loop)
            was_interrupted = False
        except KeyboardInterrupt:
            was_interrupted = True
        finally:
            sys.setprofile(None)
        assert was_interrupted or hook.places < at, f"the interrupt at place {at} did not come out of the call"
        assert handle.done() or _held_on_loop.has_ready(loop), f"interrupted at place {at}, the task was lost"
        for _ in range(1000):  # still listed: the loop's callback runs it
            if handle.done():
                break
            await asyncio.sleep(0)
        return was_interrupted, handle

    def scenario(at: int) -> bool:
        was_interrupted, handle = asyncio.run(interrupted_as_it_is_taken(at))
        assert handle.done(), f"interrupted at place {at}, the task never ended"
        assert ran.count(at) <= 1, f"interrupted at place {at}, the task ran twice"
        assert limiter.in_flight == 0, f"interrupted at place {at}, its slot is still taken"
        return was_interrupted


class _Clock:
    """``time.monotonic`` for the limiter, moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


class _RefusesOnceTold:
    """A recipient that stops taking tasks once told to (``stopped``), as a failed group does."""

    def __init__(self) -> None:
        self.stopped = False

    def _slot_wait_begins(self, limiter: Limiter) -> None:
        pass

    def _slot_wait_ends(self, limiter: Limiter) -> None:
        pass

    def _refuse_waiting(self) -> None:
        if self.stopped:
            raise RuntimeError("stopped taking tasks")


@pytest.mark.parametrize("why", ["deadline", "refused"])
def test_a_waiter_interrupted_anywhere_as_it_gives_up_leaves_the_queue(
    why: str, waits: Record, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its acquire() took it off the queue in a finally, in a call of its own: interrupted as that
    # call began, the waiter stayed queued, and the next slot freed went to it, held by nobody.
    clock = _Clock()
    monkeypatch.setattr(_admission, "time", clock)
    interrupt_at: dict[str, int] = {}  # the place to interrupt, by the name of the thread that waits
    spied_wait = _interruptible.wait

    def wait(condition: threading.Condition, timeout: float | None) -> None:
        spied_wait(condition, 0.01 if timeout is None else min(timeout, 0.01))  # the fake clock never ends it
        at = interrupt_at.get(threading.current_thread().name)
        if at is not None and clock.now:
            sys.setprofile(InterruptAt(at))  # from here on, on this thread, until its acquire() returns

    monkeypatch.setattr(_interruptible, "wait", wait)

    def scenario(at: int) -> bool:
        clock.now = 0.0
        limiter = Limiter(1)
        assert limiter.acquire()
        got = Record()
        recipient = _RefusesOnceTold()
        name = f"giving-up-{at}"
        interrupt_at[name] = at

        def acquires() -> None:
            try:
                outcome = "slot" if limiter.acquire(100.0, recipient) else "none"
            except (KeyboardInterrupt, RuntimeError) as error:
                outcome = type(error).__name__
            finally:
                sys.setprofile(None)
            got.add(outcome)

        giving_up = threading.Thread(target=acquires, name=name)
        giving_up.start()
        waits.wait_for(lambda names: name in names)
        if why == "refused":
            recipient.stopped = True
        clock.now = 200.0  # past the deadline: both ways, the wait gives up as it wakes
        got.wait_for(lambda names: len(names) >= 1)
        giving_up.join(WAIT)
        assert got.names[0] in ("KeyboardInterrupt", "none" if why == "deadline" else "RuntimeError")
        assert not limiter._waiters, f"interrupted at place {at}, the call that gave up is still queued"
        limiter.release()
        assert limiter.in_flight == 0
        return got.names[0] == "KeyboardInterrupt"

    at_each_place(scenario)
