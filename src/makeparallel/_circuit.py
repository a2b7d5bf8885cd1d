"""Circuit breakers: stop calling a dependency that keeps failing, then try it again carefully.

The design of resilience4j's count-based breaker: a ring of the last ``window``
call outcomes with running sums, so recording an outcome is O(1); a breaker is
a counter, not a gate around the call. Its lock guards the bookkeeping only, and
never a call: calls through one breaker run in parallel (pybreaker holds its
lock around the call, which serialises them).

States::

    CLOSED --failure or slow-call rate over the window reaches its threshold--> OPEN
    OPEN --recovery_timeout passed, at the next call--> HALF_OPEN (admits half_open_calls trials)
    HALF_OPEN --every trial succeeded--> CLOSED;  --a trial failed--> OPEN
    HALF_OPEN --every trial succeeded, but their slow-call rate reaches its threshold--> OPEN

While closed, the rates are over the last ``window`` calls; while half-open, over
its trials (a ring as long as ``half_open_calls``), as resilience4j computes them:
opened again by its trials, it reports what the trials showed, not the window
that first opened it.

Each stay in a state is a *round*, numbered, and a permit is of the round it was
admitted in: only outcomes of the current round's calls move the state. A call
admitted while closed that ends after the breaker opened and half-opened is no
trial: it neither closes nor reopens it, and cancelled, it gives back no trial
permit.
"""

from __future__ import annotations

import enum
import itertools
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _at_fork_in_child, _deadlines, _events
from ._predicates import ask
from ._retry import NEVER_COUNTED, RetryOn, _check_on
from ._runtime import refuse_under_a_held_lock
from ._validation import (
    check_count,
    check_finite_seconds,
    is_real,
    refuse_unfitting_call,
    shown,
)
from .errors import CircuitOpenError, ShutdownError, TaskCancelledError

__all__ = ["CircuitBreaker", "CircuitState", "CircuitStatistics", "all_breakers", "labelled_breakers"]

_breakers: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()
_breakers_lock = threading.Lock()
_made = itertools.count()  # each breaker's place in the order they were made, under _breakers_lock
# The errors of a call that was stopped, not answered: they count as nothing (answered), and an
# ``on`` that names one is refused (_check_on): the breaker would silently never open on it.
_STOPPED: tuple[type[Exception], ...] = (TaskCancelledError, ShutdownError)
# Refused, not deferred: a reset or force_open() made later, by a thread of its own, would land
# after the calls judged meanwhile, and over the program's own reset or force_open() since.
_CHANGE_ELSEWHERE = (
    "The breaker was left as it was. Call it from another thread, or have the handler set a flag and call it "
    "from your program's own flow"
)


def all_breakers() -> list[CircuitBreaker]:
    """Every breaker alive now, by name, those of one name in the order they were made."""
    with _breakers_lock:
        return sorted(_breakers, key=lambda b: (b.name, b._made))


def labelled_breakers() -> dict[str, CircuitBreaker]:
    """Every breaker alive now, by the label that tells it apart in the metrics and ``health()``.

    A breaker's label is its name, unless an older live breaker has that name:
    then ``"<name>#2"``, ``"#3"``... (the first such label that is no live
    breaker's name nor another's label). An app factory run twice makes two
    breakers of one name; keyed by name, one hid the other, and the metrics
    said closed where ``health()`` said open. Once the older one is collected,
    the newer is known by its name again.
    """
    breakers = all_breakers()
    taken = {breaker.name for breaker in breakers}
    labelled: dict[str, CircuitBreaker] = {}
    for breaker in breakers:
        label, number = breaker.name, 1
        if label in labelled:  # an older one of this name has it
            while label in taken:
                number += 1
                label = f"{breaker.name}#{number}"
            taken.add(label)
        labelled[label] = breaker
    return labelled


class CircuitState(str, enum.Enum):
    """A breaker's state; each member equals its plain string (``"closed"`` ...)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class CircuitStatistics:
    """A snapshot of one breaker.

    Attributes:
        name: the breaker's name.
        state: ``"closed"``, ``"open"`` or ``"half_open"``.
        failure_rate: failed calls over the calls in the window (0 to 1). The
            window is the last ``window`` calls while closed, and the trial
            calls from the time it turns half-open until it opens or closes
            again: opened again by them, it gives the trials' rate.
        slow_call_rate: slow calls over the calls in the window (0 to 1).
        buffered_calls: calls in the window now (at most ``window``, or
            ``half_open_calls`` for the trials).
        successful_calls, failed_calls, slow_calls: totals since creation or ``reset()``.
        not_permitted_calls: calls refused while open or half-open, since then.
        next_attempt_at: ``time.time()`` from which the open breaker admits trial
            calls; ``None`` unless open (and forever ``None`` when forced open).
    """

    name: str
    state: CircuitState
    failure_rate: float
    slow_call_rate: float
    buffered_calls: int
    successful_calls: int
    failed_calls: int
    slow_calls: int
    not_permitted_calls: int
    next_attempt_at: float | None


def _check_rate(value: Any, name: str, low_open: bool) -> float:
    """``value`` is a rate, a fraction of the calls in ``(0, 1]`` (``[0, 1]`` unless ``low_open``); returns it as a float."""
    rule = f"in {'(0' if low_open else '[0'}, 1], a fraction of the calls (0.5 for half)"
    if not is_real(value):
        raise TypeError(f"{name} must be a number {rule}, got {value!r}")
    if not (0 < value <= 1 if low_open else 0 <= value <= 1):
        raise ValueError(f"{name} must be {rule}, got {shown(value)}")
    return float(value)


# Outcomes in the ring: bit 1 failed, bit 2 slow.
_FAILED, _SLOW = 1, 2


class CircuitBreaker:
    """A count-based circuit breaker for one downstream dependency.

    Guard functions with ``@parallel(circuit_breaker=breaker)``; one breaker may
    guard many functions. While it is open, a call returns a handle that has
    already failed with :class:`~makeparallel.CircuitOpenError`, and the task
    never runs.

    Args:
        name: the breaker's name, in errors, events, metrics and ``health()``.
        failure_rate: the failure rate (0 to 1] over the window at which it opens.
        window: how many of the last calls the rates are computed over.
        min_calls: calls needed in the window before a rate can open it; more
            than ``window`` is taken as ``window`` (as resilience4j does), since
            the window never holds more calls than that.
        slow_call_seconds: a call that runs at least this long is slow; ``None``:
            no call is slow.
        slow_call_rate: the slow-call rate (0 to 1] at which it opens.
        recovery_timeout: seconds it stays open before admitting trial calls.
        half_open_calls: trial calls admitted when half-open: exactly this many,
            however many threads call at once. All must succeed to close it, and
            their slow-call rate stay under ``slow_call_rate``: one that
            fails opens it again at once, and slow ones that succeed open it
            again once all are in, if that rate reaches the threshold.
        on: what counts as a failure: an exception type, a tuple of them, or a
            predicate ``f(exc) -> bool``; other errors count as successes (the
            dependency answered). Cancellations, errors that are no
            ``Exception`` (``SystemExit``, an ``asyncio.CancelledError`` the
            task's code raised), ``ShutdownError`` (a shutdown stopped the
            call), and this breaker's own refusals, count as nothing; a ``CircuitOpenError`` that the task's
            code raised (a breaker refused a call it made) is judged by
            ``on`` as any error. An error
            whose predicate raises counts as a failure, and a note on it gives
            the predicate's error.
        clock: the monotonic clock, a function of no arguments that returns
            seconds (for tests).

    Raises:
        TypeError: an argument of the wrong type (``name`` no ``str``, a
            rate or a number of seconds no number, ``on`` no exception type,
            tuple of them or callable, ``clock`` no callable or one whose
            signature cannot be called with no arguments), naming it.
        ValueError: an argument of the right type out of range (an empty
            ``name``, a rate outside (0, 1], a count below 1, seconds
            negative or infinite, an empty ``on`` tuple), naming it and the
            value; and where ``on`` names a type that counts
            as nothing (``SystemExit``, ``KeyboardInterrupt``,
            ``GeneratorExit``, ``asyncio.CancelledError``,
            ``TaskCancelledError``, ``ShutdownError``, or a subclass of one),
            alone or in its tuple: the breaker would never open.

    Thread-safety:
        Every method may be called from any thread. A lock guards the counters
        only, for a few operations per call.
    """

    def __init__(
        self,
        name: str,
        failure_rate: float = 0.5,
        window: int = 20,
        min_calls: int = 10,
        slow_call_seconds: float | None = None,
        slow_call_rate: float = 1.0,
        recovery_timeout: float = 30.0,
        half_open_calls: int = 2,
        on: RetryOn = Exception,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, the dependency the breaker guards (CircuitBreaker('payments')), got {name!r}")
        if not name:
            raise ValueError(
                "name must be a non-empty str, the dependency the breaker guards (CircuitBreaker('payments')), got ''"
            )
        self.name = name
        self.failure_rate = _check_rate(failure_rate, "failure_rate", low_open=True)
        self.window = check_count(window, "window")
        # The ring holds at most ``window`` calls: a larger min_calls (the default 10 with a
        # window of 5) would never be reached, and the breaker would stay closed for good.
        self.min_calls = min(check_count(min_calls, "min_calls"), self.window)
        self.slow_call_seconds = check_finite_seconds(slow_call_seconds, "slow_call_seconds", allow_none=True)
        self.slow_call_rate = _check_rate(slow_call_rate, "slow_call_rate", low_open=True)
        self.recovery_timeout: float = check_finite_seconds(recovery_timeout, "recovery_timeout") or 0.0
        self.half_open_calls = check_count(half_open_calls, "half_open_calls")
        _check_on(on, NEVER_COUNTED, _STOPPED)
        self.on = on
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds, got {clock!r}")
        # First called as the breaker opens: its TypeError came from the call that opened it, and
        # from every call after, the breaker open for good.
        refuse_unfitting_call("clock", clock, "", "for the time in seconds as the breaker opens and while it is open")
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CircuitState.CLOSED
        self._forced = False
        #: The round (the stay in the current state) that permits admitted now belong to.
        self._round = 0
        #: State changes not told yet, queued under the lock in the order they happened (see
        #: ``_tell_changes``): old, new, when, and the listeners then.
        self._untold: deque[tuple[str, str, float, tuple[Callable[[_events.TaskEvent], object], ...]]] = deque()
        self._telling = False  # whether a thread tells them now, under the lock
        self._clear_locked()
        with _breakers_lock:
            self._made = next(_made)
            _breakers.add(self)

    def _clear_locked(self) -> None:
        self._clear_window_locked(self.window)
        self._opened_at = 0.0
        self._trials_admitted = self._trials_succeeded = 0
        self._successful = self._failed = self._slow = self._not_permitted = 0
        self._last_rate = self._last_slow_rate = 0.0

    # -- public ---------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """``"closed"``, ``"open"`` or ``"half_open"`` (a ``str`` enum).

        An open breaker whose recovery time passed reads ``"open"`` until the
        next call moves it to half-open.
        """
        return self._state

    def statistics(self) -> CircuitStatistics:
        """A frozen snapshot: state, rates, calls by outcome, next attempt time.

        Raises:
            RuntimeError: called from a signal handler that interrupted the
                main thread inside this breaker's locked section (a guarded
                call's admission or outcome): raised within 0.25 s, where the
                read waited for good.
        """
        self._refuse_under_its_held_lock(
            "statistics()", "Read it from another thread, or have the handler set a flag and read it from your program's own flow"
        )
        with self._lock:
            return CircuitStatistics(
                name=self.name,
                state=self._state,
                failure_rate=self._failure_rate_locked(),
                slow_call_rate=self._slows / self._buffered if self._buffered else 0.0,
                buffered_calls=self._buffered,
                successful_calls=self._successful,
                failed_calls=self._failed,
                slow_calls=self._slow,
                not_permitted_calls=self._not_permitted,
                next_attempt_at=self._next_attempt_wall_locked(),
            )

    def reset(self) -> None:
        """Close the breaker and forget every recorded call.

        Raises:
            RuntimeError: called from a signal handler that interrupted the
                main thread inside this breaker's locked section (a guarded
                call's admission or outcome): raised within 0.25 s, where the
                call waited for good; the breaker is left as it was.
        """
        self._refuse_under_its_held_lock("reset()", _CHANGE_ELSEWHERE)
        with self._lock:
            old = self._state
            self._state = CircuitState.CLOSED
            self._forced = False
            self._round += 1  # the calls under way are forgotten too
            self._clear_locked()
            untold = self._changed_locked(old, CircuitState.CLOSED)
        if untold:
            self._tell_changes()

    def force_open(self) -> None:
        """Open the breaker until :meth:`reset`: every call is refused (for maintenance).

        Raises:
            RuntimeError: called from a signal handler that interrupted the
                main thread inside this breaker's locked section (a guarded
                call's admission or outcome): raised within 0.25 s, where the
                call waited for good; the breaker is left as it was.
        """
        self._refuse_under_its_held_lock("force_open()", _CHANGE_ELSEWHERE)
        with self._lock:
            old = self._state
            self._state = CircuitState.OPEN
            self._forced = True
            self._round += 1
            untold = self._changed_locked(old, CircuitState.OPEN)
        if untold:
            self._tell_changes()

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._state.value}>"

    def __reduce__(self) -> tuple[Any, ...]:
        """Refuse, naming the breaker: it counts the calls of this process, and stays in it.

        Raises:
            TypeError: always. Its lock made pickle say only "cannot pickle
                '_thread.lock' object", from a process task (a function of the
                main script, or a closure, sent by value with the breaker it
                uses), naming no breaker; and a copy counted apart, guarding
                nothing here.
        """
        raise TypeError(
            f"CircuitBreaker {self.name!r} cannot be pickled or copied: it counts the calls of the process "
            "that made it, and stays there (a copy in a worker process would count apart and guard nothing "
            "here). Guard the task in this process instead: @parallel(backend=\"process\", circuit_breaker=...) "
            "asks the breaker before each call is sent and counts its outcome here; or make a breaker in the "
            "worker (in a module the task imports), which counts that worker's calls only"
        )

    def _refuse_under_its_held_lock(self, call: str, instead: str) -> None:
        """Raise ``RuntimeError`` where ``call`` would wait for good for this breaker's lock, held below a signal handler.

        Only the public calls a handler may make look (on the main thread
        only, see :func:`._runtime.held_below`): the engine's, on every
        guarded call, take the lock as they did.
        """
        refuse_under_a_held_lock(f"CircuitBreaker({self.name!r}).{call}", lambda: [self._lock], instead)

    # -- engine side ------------------------------------------------------------------

    def admit(self) -> int | CircuitOpenError:
        """Take a permit for one call: the round it was admitted in, else the error to fail it with.

        Raises:
            KeyboardInterrupt: a Ctrl-C on the main thread as it told listeners
                the change this call made (to half-open); the permit is given
                back, and the call is not to run.
        """
        with self._lock:
            old = self._state
            if old is CircuitState.OPEN and not self._forced and self._clock() - self._opened_at >= self.recovery_timeout:
                self._state = CircuitState.HALF_OPEN
                self._round += 1
                self._trials_admitted = self._trials_succeeded = 0
                self._clear_window_locked(self.half_open_calls)
            state = self._state
            if state is CircuitState.CLOSED or (
                state is CircuitState.HALF_OPEN and self._trials_admitted < self.half_open_calls
            ):
                if state is CircuitState.HALF_OPEN:
                    self._trials_admitted += 1
                permit: int | CircuitOpenError = self._round
            else:
                self._not_permitted += 1
                permit = self._refusal_locked()
            untold = state is not old and self._changed_locked(old, state)
        # A retry's next attempt is admitted on the deadline thread, which serves every
        # timeout: a slow listener there held them all back. Where no thread can start,
        # it is told here, late, rather than the permit lost.
        if untold and (threading.current_thread() is not _deadlines._thread or not self.tell_aside()):
            try:
                self._tell_changes()
            except BaseException:
                # A Ctrl-C in a listener on the main thread: the call ends here, without its
                # permit. Kept, a trial permit was taken by no call, and a half-open breaker
                # refused every call until reset().
                if isinstance(permit, int):
                    self.release(permit)
                raise
        return permit

    @staticmethod
    def answered(error: BaseException) -> bool:
        """Whether a call that ran and failed with ``error`` tells anything of the dependency.

        Not a cancellation, nor an error that is no ``Exception``
        (``KeyboardInterrupt``, ``SystemExit``, an ``asyncio.CancelledError``
        that the task's own code raised), nor a ``ShutdownError`` (a shutdown
        stopped the call, or it never started; or its code called a pool
        that was shut down): such a call was stopped, it got no answer. It
        counts as nothing, as a cancelled call does, and gives back its trial
        permit; counted as a success (``on`` names no such error), a
        half-open trial ending so closed the breaker, and counted as a
        failure (the default ``on``), a shutdown opened the breaker, which
        then refused every call after ``reset_shutdown()``.
        """
        return isinstance(error, Exception) and not isinstance(error, _STOPPED)

    def counts_as_failure(self, error: BaseException) -> bool:
        """Whether ``error``, the outcome of a call that ran, fails the dependency (``on``); cancellations never do.

        A ``CircuitOpenError`` is judged as any error: the call ran, and its code
        was refused by the breaker of a dependency it called. This breaker's own
        refusals never ran, and their callers never ask.
        """
        if isinstance(error, TaskCancelledError) or not isinstance(error, Exception):
            return False
        on = self.on
        if isinstance(on, (type, tuple)):
            return isinstance(error, on)
        return ask(on, error, f"circuit breaker {self.name!r}", True, "counted as a failure")

    def record(self, failed: bool, seconds: float | None, admitted_in: int | None) -> bool:
        """Record the outcome of one call admitted in round ``admitted_in``; return whether the caller must tell a change.

        Every outcome is counted in the statistics; only one of the current
        round moves the state. True: the state changed, listeners are to hear
        of it and no thread tells them now; the caller calls :meth:`tell_aside`
        once outside its own locks.
        """
        slow = self.slow_call_seconds is not None and seconds is not None and seconds >= self.slow_call_seconds
        outcome = (_FAILED if failed else 0) | (_SLOW if slow else 0)
        with self._lock:
            if failed:
                self._failed += 1
            else:
                self._successful += 1
            if slow:
                self._slow += 1
            old = self._state
            if admitted_in != self._round:
                return False  # admitted before the state it ends in: it tells nothing of this round
            if old is CircuitState.HALF_OPEN:
                self._push_locked(outcome)
                if failed:
                    self._open_locked()
                else:
                    self._trials_succeeded += 1
                    if self._trials_succeeded >= self.half_open_calls:
                        self._end_trials_locked()
            elif old is CircuitState.CLOSED:
                self._push_locked(outcome)
                # Rates compared as rates: 7 of 25 is 0.28 exactly, but 7 >= 0.28 * 25 is
                # False (7.000000000000001), and the breaker stayed closed at its threshold.
                if self._buffered >= self.min_calls and (
                    self._failures / self._buffered >= self.failure_rate
                    or (self.slow_call_seconds is not None and self._slows / self._buffered >= self.slow_call_rate)
                ):
                    self._open_locked()
            new = self._state
            return new is not old and self._changed_locked(old, new)

    def release(self, admitted_in: int | None) -> None:
        """A call admitted in round ``admitted_in`` was cancelled before its outcome: give back its trial permit, if it was one."""
        with self._lock:
            if (
                self._state is CircuitState.HALF_OPEN
                and admitted_in == self._round
                and self._trials_admitted > self._trials_succeeded
            ):
                self._trials_admitted -= 1

    def why_open(self, failure_rate: float, slow_call_rate: float) -> str:
        """Why this breaker is open, as its refusals and ``health()`` say it: forced open, or the rates given.

        The slow-call rate too where slow calls are measured: a breaker that slow
        calls opened read "open (failure rate 0%)", and so did one forced open,
        whatever rate opened it before.
        """
        if self._forced:
            return "forced open by force_open()"
        if self.slow_call_seconds is None:
            return f"failure rate {failure_rate:.0%}"
        return f"failure rate {failure_rate:.0%}, slow-call rate {slow_call_rate:.0%}"

    def tell_aside(self) -> bool:
        """Tell listeners the changes not told yet, on a thread of its own; False where none could start.

        For callers that hold a lock, or serve every timeout: listeners run
        whatever they like, for as long as they like. Where no thread could
        start, the changes wait, in order, for the next change's telling.
        """
        try:
            threading.Thread(target=self._tell_changes, name="makeparallel-circuit-event", daemon=True).start()
        except RuntimeError:  # can't start new thread (the process limit counts threads)
            return False
        return True

    # -- internals --------------------------------------------------------------------

    def _clear_window_locked(self, size: int) -> None:
        """Start an empty window of ``size`` calls: ``window`` while closed, ``half_open_calls`` for the trials.

        The ring grows as outcomes arrive, up to ``size``: made whole at once, a
        window of 10**9 took 1 GB, and a larger count (one beyond any
        bytearray) raised OverflowError from the call that turned the breaker
        half-open, or from a retry's admission on the deadline thread, leaving
        that task waiting for good.
        """
        self._ring = bytearray()
        self._size = size
        self._next = 0  # where the next outcome goes, once the ring is full
        self._buffered = 0
        self._failures = self._slows = 0  # sums over the ring

    def _push_locked(self, outcome: int) -> None:
        ring, i = self._ring, self._next
        if self._buffered < self._size:  # filling: oldest first, so that index 0 leaves first
            ring.append(outcome)
            self._buffered += 1
        else:  # the oldest outcome leaves the sums
            self._failures -= ring[i] & _FAILED
            self._slows -= (ring[i] & _SLOW) >> 1
            ring[i] = outcome
            self._next = (i + 1) % self._size
        self._failures += outcome & _FAILED
        self._slows += (outcome & _SLOW) >> 1

    def _end_trials_locked(self) -> None:
        """Every trial succeeded: close, unless the trials' slow-call rate reached its threshold.

        A slow trial that succeeded is a success, weighed in that rate once all
        are in, as resilience4j judges them: reopened at it, as at a failure, a
        breaker whose ``slow_call_rate`` was 100% reopened at one slow trial of
        two, refusing for another ``recovery_timeout`` a dependency that
        answered every trial.
        """
        if self.slow_call_seconds is not None and self._slows / self._buffered >= self.slow_call_rate:
            self._open_locked()
            return
        self._state = CircuitState.CLOSED
        self._round += 1
        self._clear_window_locked(self.window)

    def _open_locked(self) -> None:
        self._last_rate = self._failures / self._buffered if self._buffered else 1.0
        self._last_slow_rate = self._slows / self._buffered if self._buffered else 0.0
        self._state = CircuitState.OPEN
        self._round += 1
        self._opened_at = self._clock()

    def _failure_rate_locked(self) -> float:
        """Failed calls over the calls in the window now (0.0 while it is empty)."""
        return self._failures / self._buffered if self._buffered else 0.0

    def _next_attempt_wall_locked(self) -> float | None:
        if self._state is not CircuitState.OPEN or self._forced:
            return None
        return time.time() + max(0.0, self._opened_at + self.recovery_timeout - self._clock())

    def _refusal_locked(self) -> CircuitOpenError:
        retry_at = self._next_attempt_wall_locked()
        if self._forced:
            when = "breaker.reset() closes it"
        elif retry_at is None:  # half-open, its trial calls all taken
            when = f"it is half-open and its {self.half_open_calls} trial call(s) are taken"
        else:
            when = f"it lets trial calls through again in {max(0.0, retry_at - time.time()):.1f} s"
        # Forced open, no rate opened it: the window's, as statistics() gives it. The rate that
        # opened it last was no reason, and could be from an opening long since closed.
        failure_rate = self._failure_rate_locked() if self._forced else self._last_rate
        return CircuitOpenError(
            f"circuit breaker {self.name!r} is open ({self.why_open(self._last_rate, self._last_slow_rate)}): the call was "
            f"refused and did not run; {when}",
            breaker=self.name,
            failure_rate=failure_rate,
            retry_at=retry_at,
        )

    def _changed_locked(self, old: CircuitState, new: CircuitState) -> bool:
        """Queue a change from ``old`` to ``new`` for the listeners there are; whether a thread must tell it (none does now).

        Queued under the lock that changed the state, so the queue holds the
        changes in the order they happened.
        """
        listening = _events.listeners
        if new is old or not listening:
            return False
        self._untold.append((old.value, new.value, time.time(), listening))
        return not self._telling

    def _tell_changes(self) -> None:
        """Tell the changes not told yet, oldest first, unless another thread tells them now.

        One breaker's changes are told by one thread at a time, in the order
        they happened: each on a thread of its own, a listener slow on "open"
        heard the "closed" that followed first, and a dashboard keeping the
        last state it was told said open with the breaker closed. A change
        made while a thread tells is queued for that thread, and its own
        thread goes on at once; the lock is never held while a listener runs.
        """
        untold = self._untold
        with self._lock:
            if self._telling:
                return
            self._telling = True
        interrupt: KeyboardInterrupt | None = None
        try:
            while True:
                with self._lock:
                    if not untold:
                        self._telling = False
                        break
                    old, new, when, listening = untold.popleft()
                try:
                    _events.emit_circuit(self.name, old, new, when, listening)
                except KeyboardInterrupt as error:  # on the main thread: once the queue is told
                    interrupt = interrupt or error
        except BaseException:  # a Ctrl-C between two changes: the next change's telling tells what is left, first
            self._telling = False
            raise
        if interrupt is not None:
            raise interrupt


def check_breaker(breaker: Any) -> CircuitBreaker | None:
    """``circuit_breaker=``: a :class:`CircuitBreaker` or ``None``."""
    if breaker is not None and not isinstance(breaker, CircuitBreaker):
        raise TypeError(f"circuit_breaker must be a makeparallel.CircuitBreaker or None, got {breaker!r}")
    return breaker


def _after_fork_in_child() -> None:
    """In a forked child: new locks, and a half-open breaker's trials in flight are the parent's.

    A thread of the parent may have held a lock as it forked. And the trials
    will report in the parent only: counted as taken here, they made the
    child refuse every call for good.
    """
    global _breakers_lock
    _breakers_lock = threading.Lock()
    for breaker in list(_breakers):
        breaker._lock = threading.Lock()
        breaker._trials_admitted = breaker._trials_succeeded
        # The changes not told yet are the parent's to tell, and its telling thread is not here.
        breaker._untold.clear()
        breaker._telling = False


_at_fork_in_child(_after_fork_in_child)
