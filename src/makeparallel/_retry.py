"""Retry with backoff: a frozen policy, and each task's own record of its attempts.

The policy (:class:`Retry`) is configuration only, shared by every call of a
function; what one call has done so far lives in its handle (:class:`Attempts`),
so calls never see each other's progress. That split follows stamina
(hynek/stamina); tenacity keeps statistics on the shared wrapper, and concurrent
calls overwrite each other's.

A retry never sleeps on a worker: the failed attempt ends, the handle waits in the
``"waiting to retry"`` state, and the deadline thread puts it back in its pool's
queue when the wait is over (the ``"sync"`` backend, which runs everything in the
caller, waits in the caller).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

from ._notes import add_note
from ._predicates import ask, note_what_it_raised
from ._validation import (
    as_integer,
    as_seconds,
    check_count,
    check_finite_seconds,
    is_real,
    refuse_unfitting_call,
    shown,
    unused_call_kind,
)
from .errors import CircuitOpenError, TaskCancelledError, TaskTimeoutError

__all__ = ["Attempts", "Retry", "RetryOn", "check_retry", "suspend_waits", "waits_enabled"]

RetryOn = Union[type[BaseException], tuple[type[BaseException], ...], Callable[[BaseException], bool]]

# Library outcomes retried only when ``on`` names them (or a subclass) as themselves:
# retrying every ``TimeoutError`` or ``Exception`` should not silently retry these.
_EXPLICIT_ONLY = (TaskTimeoutError, CircuitOpenError)

_no_waits_lock = threading.Lock()
_no_waits = 0  # blocks of makeparallel.testing.no_retry_waits() open now


def _check_can_apply(kind: type[BaseException], never: str, stopped: tuple[type[Exception], ...]) -> None:
    if issubclass(kind, stopped) or not _has_exceptions(kind):
        # A ValueError: the type is the value of on, and of the right kind (an exception type).
        raise ValueError(
            f"on names {kind.__name__}, which {never}: it could never apply. Name the errors (Exception "
            f"subclasses) to look at, got on={kind!r}"
        )


def _has_exceptions(kind: type[BaseException]) -> bool:
    """Whether some errors of ``kind`` are ``Exception``s: it is one, a base of one, or a subclass of it is one.

    The last for ``BaseExceptionGroup``: no ``Exception``, but ``ExceptionGroup`` (an
    ``asyncio.TaskGroup``'s error) is one of its subclasses.
    """
    if issubclass(kind, Exception) or issubclass(Exception, kind):
        return True
    return any(_has_exceptions(subclass) for subclass in type.__subclasses__(kind))


def waits_enabled() -> bool:
    """Whether retries wait their computed time (``no_retry_waits()`` makes them not)."""
    return _no_waits == 0


def suspend_waits(delta: int) -> None:
    """Open (+1) or close (-1) a block in which every retry wait is zero."""
    global _no_waits
    with _no_waits_lock:
        _no_waits += delta


# Why each user of ``on`` never applies it to a cancellation or an error that is no Exception.
NEVER_RETRIED = "is never retried (a cancellation, or an exit or interrupt that is no Exception)"
NEVER_COUNTED = (
    "counts as nothing, neither failure nor success (a cancellation, a call a shutdown stopped, or an exit or "
    "interrupt that is no Exception)"
)


def _check_on(
    on: Any, never: str = NEVER_RETRIED, stopped: tuple[type[Exception], ...] = (TaskCancelledError,)
) -> None:
    """Check ``on``: an exception type, a tuple of them, or a predicate; ``never`` says why a type named can never apply.

    A predicate must be a plain function of the error: an async one, or one
    that cannot take it, is refused here, not at each error.

    A type can never apply where each of its errors is one of ``stopped``
    (a cancellation, ``TaskCancelledError``; for a breaker, a shutdown's
    ``ShutdownError`` too) or no ``Exception`` (``SystemExit``,
    ``KeyboardInterrupt``, ``GeneratorExit``, ``asyncio.CancelledError``):
    neither a retry nor a breaker looks at those, so the policy or the
    breaker would silently do nothing. ``BaseException`` can: it is a base
    of every ``Exception``; so can ``BaseExceptionGroup``: ``ExceptionGroup``
    is an ``Exception`` and its subclass.
    """
    if isinstance(on, type):
        if not issubclass(on, BaseException):
            raise TypeError(f"on must be an exception type, a tuple of them or a predicate, got the type {on.__name__}")
        _check_can_apply(on, never, stopped)
        return
    if isinstance(on, tuple):
        if not on:
            raise ValueError(
                "on must name at least one exception type, got an empty tuple: name the errors to look at, as "
                "on=ConnectionError or on=(ConnectionError, TimeoutError)"
            )
        for kind in on:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise TypeError(f"on must hold exception types only, got {kind!r}")
        for kind in on:
            _check_can_apply(kind, never, stopped)
        return
    if not callable(on):
        raise TypeError(f"on must be an exception type, a tuple of them or a predicate f(exc) -> bool, got {on!r}")
    # Asked with each error as it comes: an async predicate's coroutine was always true (every error
    # retried or counted, "never awaited" warned), one that could not take the error failed each time.
    made = unused_call_kind(on)
    if made is not None:
        raise TypeError(
            f"on={getattr(on, '__qualname__', on)!s} is {made[0]}: asked about each error, it would only make "
            f"{made[1]}, which is always true. Pass a plain predicate f(exc) -> bool"
        )
    refuse_unfitting_call("on", on, "exc", "with each error, as a predicate f(exc) -> bool")


def _shown_safely(value: Any) -> str:
    """:func:`shown` of ``value``, or its type where its ``repr()`` raises: for a note written on a pool's thread.

    A subclass's ``wait()`` may return anything; a note that raised as it
    showed the value (``repr()`` of an int past 4300 digits, or a value's own
    ``__repr__``) killed the thread, under the task's lock, as the value's
    ``float()`` did.
    """
    try:
        return shown(value)
    except Exception as raised:  # noqa: BLE001  # any error of the user's __repr__: the note goes on without it
        return f"a {type(value).__qualname__} (its repr() raised {type(raised).__name__})"


@dataclass(frozen=True)
class Retry:
    """When and how often to run a failed task again, and how long to wait between.

    Pass it to ``@parallel(retry=Retry(on=...))``. The wait before attempt n+1 is
    ``min(wait_max, wait_initial * wait_exp_base ** (n - 1) + uniform(0, wait_jitter))``:
    exponential backoff with additive jitter, the formula and defaults of stamina.
    After a :class:`~makeparallel.CircuitOpenError` the wait lasts at least
    until its ``retry_at``, when the breaker admits calls again, and the jitter
    is added past it, so that the tasks it refused do not all come back at once.

    Args:
        on: what to retry: an exception type, a tuple of them, or a predicate
            ``f(exc) -> bool`` (called on the thread that ran the attempt, outside
            the library's locks; where it raises, the error is not retried, and
            a note on it gives the predicate's error). Required. Never retried, whatever it says:
            ``KeyboardInterrupt``, ``SystemExit`` and other non-``Exception``
            errors, and cancellation. ``TaskTimeoutError`` (the task's own
            ``timeout=``) and ``CircuitOpenError`` are retried only when ``on``
            is a type or tuple that lists them (or a subclass) as themselves,
            not through a base class such as ``TimeoutError`` or ``Exception``;
            a predicate never sees them.
        attempts: attempts in all, the first included (an int >= 1).
        timeout: seconds for all attempts and waits together, counted from the
            first start; no attempt starts after it. ``None``: no limit.
            Whichever of ``attempts`` and ``timeout`` comes first stops it;
            stopped by ``timeout``, the final error's note says so.
        wait_initial: seconds before the second attempt (without jitter); at
            most ``wait_max``.
        wait_max: the longest wait, in seconds; at least ``wait_initial``.
        wait_jitter: at most this many seconds are added at random to each wait,
            so that many callers retrying together spread out.
        wait_exp_base: the factor by which the wait grows per attempt (1 keeps it
            constant).

    Raises:
        TypeError: ``on`` is not an exception type, a tuple of them or a callable;
            a number is of the wrong type.
        ValueError: ``attempts`` < 1, a negative or infinite number of seconds,
            ``wait_initial`` longer than ``wait_max`` (the default 5 s too:
            pass a larger ``wait_max`` with a long first wait; every wait
            would be cut to it), ``wait_exp_base`` below 1 or infinite, an
            empty ``on`` tuple, or
            ``on`` names a type that is never retried (``SystemExit``,
            ``KeyboardInterrupt``, ``GeneratorExit``, ``asyncio.CancelledError``,
            ``TaskCancelledError``, or a subclass of one), alone or in its tuple.
    """

    on: RetryOn
    attempts: int = 10
    timeout: float | None = 45.0
    wait_initial: float = 0.1
    wait_max: float = 5.0
    wait_jitter: float = 1.0
    wait_exp_base: float = 2.0

    def __post_init__(self) -> None:
        _check_on(self.on)
        attempts = as_integer(self.attempts)
        if attempts is None:
            raise TypeError(f"attempts must be an int >= 1, got {self.attempts!r}")
        if attempts < 1:
            raise ValueError(f"attempts must be an int >= 1 (the first attempt counts), got {shown(self.attempts)}")
        check_finite_seconds(self.timeout, "timeout", allow_none=True)
        for name in ("wait_initial", "wait_max", "wait_jitter"):
            check_finite_seconds(getattr(self, name), name)
        factor = self.wait_exp_base  # a factor, not seconds
        if not is_real(factor):
            raise TypeError(f"wait_exp_base must be a number (the growth factor of the wait), got {factor!r}")
        if not 1 <= as_seconds(factor) < math.inf:
            raise ValueError(f"wait_exp_base must be a finite number >= 1 (1 keeps waits constant), got {shown(factor)}")
        # NumPy's numbers (or a Fraction) kept as plain ones: their arithmetic in
        # _backoff warns where a float's raises OverflowError, and they would
        # show in the policy's repr and in RetryDetails.
        object.__setattr__(self, "attempts", attempts)
        for name in ("timeout", "wait_initial", "wait_max", "wait_jitter", "wait_exp_base"):
            value = getattr(self, name)
            if value is not None and type(value) not in (int, float):
                object.__setattr__(self, name, as_seconds(value))
        if self.wait_initial > self.wait_max:
            # Capped silently (as tenacity and stamina cap it), Retry(wait_initial=100) waited 5 s each time.
            raise ValueError(
                f"wait_initial must be <= wait_max (the longest wait), got wait_initial={self.wait_initial:g} and "
                f"wait_max={self.wait_max:g}: every wait would be cut to {self.wait_max:g} s. Pass "
                f"wait_max={self.wait_initial:g} or more (its default is 5), or a smaller wait_initial"
            )

    def retries(self, error: BaseException) -> bool:
        """Whether ``on`` asks to retry ``error``, before counting attempts or time."""
        if not isinstance(error, Exception) or isinstance(error, TaskCancelledError):
            return False
        on = self.on
        explicit = isinstance(error, _EXPLICIT_ONLY)
        if isinstance(on, (type, tuple)):
            kinds = on if isinstance(on, tuple) else (on,)
            if explicit:
                kinds = tuple(k for k in kinds if issubclass(k, _EXPLICIT_ONLY))
            return isinstance(error, kinds)
        return not explicit and ask(on, error, "the retry policy", False, "not retried")

    def wait(self, failed_attempt: int) -> float:
        """Seconds to wait after attempt number ``failed_attempt`` (1-based) failed: the backoff.

        After a :class:`~makeparallel.CircuitOpenError` the retry waits longer
        where the breaker admits calls later (:meth:`_wait_after`); a subclass
        that overrides this for a backoff of its own keeps that.

        Raises:
            TypeError: ``failed_attempt`` is not an int (a bool is not).
            ValueError: ``failed_attempt`` is below 1: no such attempt ran.
        """
        failed_attempt = check_count(failed_attempt, "failed_attempt", alternatives=" (1 for the first attempt)")
        if not waits_enabled():
            return 0.0
        return self._backoff(failed_attempt)

    def _wait_after(self, failed_attempt: int, error: BaseException, left: float | None) -> float | None:
        """Seconds to wait after attempt number ``failed_attempt`` failed with ``error``, ``left`` seconds of the timeout to go.

        :meth:`wait`; after a :class:`~makeparallel.CircuitOpenError` whose
        ``retry_at`` is set, where that is later, the seconds until then plus
        up to ``wait_jitter`` at random, even past ``wait_max``: an attempt
        sooner would be refused too, at once, and the retries were spent in
        milliseconds while the breaker stayed open. Where ``retry_at`` comes
        before ``left`` (``None``: no timeout) runs out, at most ``left``.
        What the engine and the retrying decorators wait. ``None`` where a
        subclass's ``wait()`` raised, or gave no number of seconds
        (:meth:`_asked_wait`): the task is not retried.
        """
        backoff = self._asked_wait(failed_attempt, error)
        if backoff is None or not waits_enabled() or not isinstance(error, CircuitOpenError):
            return backoff
        retry_at = error.retry_at  # time.time(); None when forced open (only reset() closes it)
        if retry_at is None or not is_real(retry_at):  # one the task's own code made may hold anything
            return backoff
        remaining = as_seconds(retry_at) - time.time()
        if not math.isfinite(remaining) or remaining <= backoff:
            return backoff
        # Every task the breaker refused waits for this same moment: the jitter spreads them
        # out past it, as it spreads any wait (lost in the larger of the two, they all came
        # back at once, and all but its few trial calls were refused again together).
        # Within the time the timeout leaves, where retry_at comes first: drawn past it, the
        # jitter gave up at once an attempt the breaker would have admitted in time. (A
        # microsecond short of it: the caller's sum for the due time rounds.)
        room = self.wait_jitter
        if left is not None and remaining <= left:
            room = min(room, max(0.0, left - remaining - 1e-6))
        return remaining + (random.uniform(0.0, room) if room else 0.0)

    def _asked_wait(self, failed_attempt: int, error: BaseException) -> float | None:
        """:meth:`wait`, or ``None`` where it raised or gave no number of seconds, with a note on ``error``.

        A subclass's ``wait()`` runs as a task's attempt ends, on a pool's
        thread, under the task's lock: one that raised there (or returned
        ``None``, which the sum for its due time raised on) killed that
        thread, and the task never ended. As an ``on=`` predicate that raises
        (``_predicates``), it fails the task instead, with its own error and a
        note saying why it was not retried. Zero within ``no_retry_waits()``,
        a subclass's wait too.
        """
        what = f"makeparallel: not retried: the retry policy's wait({failed_attempt})"
        try:
            seconds = self.wait(failed_attempt)
        except BaseException as raised:  # the user's code, on a thread of the pool's that must go on
            if isinstance(raised, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
                raise
            note_what_it_raised(error, what, raised)
            return None
        if is_real(seconds) and seconds >= 0:  # (NaN is not)
            # A subclass's own wait() knows nothing of no_retry_waits(): asked all the same, so
            # that one that fails ends the task as it would outside the block, its wait is zero.
            # An int too large for a float is infinitely many seconds (float() of it raised
            # OverflowError, which killed the pool's thread that asked).
            return as_seconds(seconds) if waits_enabled() else 0.0
        add_note(error, f"{what} returned {_shown_safely(seconds)}, not a number of seconds >= 0")
        return None

    def _backoff(self, failed_attempt: int) -> float:
        exponent = min(failed_attempt - 1, 1024)  # a float overflow would not wait any longer
        try:
            grown = self.wait_initial * self.wait_exp_base**exponent
        except OverflowError:  # past any wait_max, unless there is nothing to grow (0 times it is 0)
            grown = math.inf if self.wait_initial else 0.0
        jitter = random.uniform(0.0, self.wait_jitter) if self.wait_jitter else 0.0
        return min(self.wait_max, grown + jitter)


@dataclass(frozen=True)
class _LinearRetry(Retry):
    """Waits growing by ``wait_initial`` per attempt: ``retry_backoff(backoff="linear")``."""

    def _backoff(self, failed_attempt: int) -> float:
        return min(self.wait_max, self.wait_initial * failed_attempt)


def check_retry(retry: Any) -> Retry | None:
    """``retry=``: a :class:`Retry` or ``None``."""
    if retry is not None and not isinstance(retry, Retry):
        raise TypeError(
            f"retry must be a makeparallel.Retry (for example Retry(on=ConnectionError)) or None, got {retry!r}"
        )
    return retry


@dataclass
class Attempts:
    """What one task's retries have done so far (kept on its handle, under its backend's lock)."""

    first_started: float
    #: One ``(attempt number, error type name, seconds since the first start)`` per failed attempt.
    failures: list[tuple[int, str, float]] = field(default_factory=list)
    last_error: BaseException | None = None
    #: Retries scheduled (a cancel or a shutdown during the wait stops the last one before it runs).
    retries: int = 0
    #: Retries counted in the metrics: those whose attempt ran, counted as it failed or the task ended.
    counted: int = 0
    retried_start: float | None = None  # the start time of the attempt retried last
    #: When the attempt after the one retried last began to wait for a worker: its retry's due time
    #: (the first attempt's: the task's submission). Its wait to retry is no queueing.
    queued_at: float = 0.0
    #: How long the attempt retried last waited for its worker (``None``: it never started).
    retried_wait: float | None = None
    wait: float = 0.0
    due: float = 0.0
    #: Whether the attempt under way holds its circuit breaker's permit (made for an attempt that
    #: ran). Not while it waits to retry: the failed attempt's outcome was recorded, or the
    #: breaker refused it.
    holds_permit: bool = True
    #: Whether the attempt that failed last timed out.
    timed_out: bool = False
    #: Whether the attempt that failed last (``last_error``) was its circuit breaker's refusal, so never
    #: ran: its ``CircuitOpenError`` is no outcome of the dependency, as one the task's code raised is.
    refused: bool = False
    #: Why no attempt followed the last one, where ``on`` wanted one (the backend shut down, the
    #: policy's timeout would pass first).
    stopped: str | None = None
    #: The starts of the attempts retried past their timeout whose pool workers still run them,
    #: each counted as a stuck worker until it returns (the thread pool's ``_schedule_retry_locked``).
    late_on_workers: list[float] = field(default_factory=list)
    #: The thread (its ident) that runs the next attempt once the wait is over, where that is the
    #: task's caller: a ``"sync"`` task run inline (``SyncBackend._schedule_retry_locked``).
    caller: int | None = None

    def out_of_time(self, timeout: float | None, now: float, wait: float) -> bool:
        """Whether the next attempt, ``wait`` seconds after ``now``, would start past ``timeout`` (the policy's); if so, say why.

        The final error's note then gives the reason, as it gives a shutdown's:
        without it, the note listed fewer attempts than the policy allowed and
        left the reader to guess why.
        """
        if timeout is None:
            return False
        due = now + wait - self.first_started
        if due <= timeout:
            return False
        self.stopped = (
            f"the retry policy's timeout of {timeout:g} s would pass before attempt {len(self.failures) + 1} "
            f"(due {due:.3f} s after the first start, after a wait of {wait:.3f} s)"
        )
        return True

    def describe(self) -> str:
        """The note listing every failed attempt, and why the retries stopped early if they did, for the final error."""
        lines = [f"attempt {n}: {kind} after {elapsed:.3f} s" for n, kind, elapsed in self.failures]
        note = f"makeparallel: {len(self.failures)} attempt(s) failed: " + "; ".join(lines)
        return note if self.stopped is None else f"{note}; not retried again: {self.stopped}"
