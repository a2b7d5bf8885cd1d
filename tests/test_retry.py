"""Retry with backoff: the policy, the attempts of one handle, waits that hold no worker."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import inspect
import math
import multiprocessing
import os
import pickle
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
import concurrent.futures
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import makeparallel as mp
from makeparallel import _retrying, _runtime
from makeparallel._backends._adapter import ExecutorBackend
from makeparallel._handle import AsyncHandle
from makeparallel._remote_errors import CarriedError
from makeparallel._task_context import current_task
from makeparallel.testing import no_retry_waits
from pool_helpers import hold_one_worker, resize, wait_until

@pytest.fixture
def events() -> Iterator[list[mp.TaskEvent]]:
    seen: list[mp.TaskEvent] = []
    mp.add_task_listener(seen.append)
    yield seen
    mp.remove_task_listener(seen.append)


class Flaky:
    """Fails ``failures`` times with ``error``, then returns the attempt number (thread-safe)."""

    def __init__(self, failures: int, error: type[BaseException] = ConnectionError) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self) -> int:
        with self.lock:
            self.calls += 1
            calls = self.calls
        if calls <= self.failures:
            raise self.error(f"attempt {calls} failed")
        return calls


def count_call(path: str) -> int:
    """Add this call to the count kept in the file ``path``; return the count (processes share no memory)."""
    with open(path, "a+") as f:
        f.write("x")
        f.seek(0)
        return len(f.read())


def flaky_in_process(path: str, failures: int) -> int:
    """The process-backend twin of Flaky: counts attempts in a file, as workers share no memory."""
    calls = count_call(path)
    if calls <= failures:
        raise ConnectionError(f"attempt {calls} failed")
    return calls


# -- the policy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("on", "error", "retried"),
    [
        (ConnectionError, ConnectionError(), True),
        (ConnectionError, ValueError(), False),
        ((ConnectionError, ValueError), ValueError(), True),
        (Exception, KeyboardInterrupt(), False),
        (BaseException, SystemExit(), False),
        (Exception, mp.TaskCancelledError(), False),
        (Exception, mp.TaskTimeoutError(), False),
        (TimeoutError, mp.TaskTimeoutError(), False),
        ((mp.TaskTimeoutError,), mp.TaskTimeoutError(), True),
        (Exception, mp.CircuitOpenError("open"), False),
        (mp.CircuitOpenError, mp.CircuitOpenError("open"), True),
        (lambda e: True, ValueError(), True),
        (lambda e: False, ValueError(), False),
        (lambda e: True, mp.TaskTimeoutError(), False),
        (lambda e: True, mp.TaskCancelledError(), False),
    ],
)
def test_what_is_retried(on: Any, error: BaseException, retried: bool) -> None:
    assert mp.Retry(on=on).retries(error) is retried


def test_waits_grow_exponentially_up_to_the_cap() -> None:
    policy = mp.Retry(on=Exception, wait_initial=0.1, wait_max=1.0, wait_jitter=0.0, wait_exp_base=2.0)
    assert [policy.wait(n) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    assert policy.wait(10_000) == 1.0  # no overflow


def test_waits_from_zero_stay_zero_where_the_growth_overflows() -> None:
    # 1e10 ** 31 overflows a float: the growth was taken as infinite, and 0 times it as
    # infinite too, so the 32nd wait of a policy whose waits are all 0 was wait_max.
    policy = mp.Retry(on=Exception, wait_initial=0.0, wait_max=5.0, wait_jitter=0.0, wait_exp_base=1e10)
    assert [policy.wait(n) for n in (1, 31, 32, 10_000)] == [0.0, 0.0, 0.0, 0.0]


def test_jitter_adds_at_most_wait_jitter() -> None:
    random.seed(7)
    policy = mp.Retry(on=Exception, wait_initial=1.0, wait_max=100.0, wait_jitter=0.5)
    waits = [policy.wait(1) for _ in range(200)]
    assert all(1.0 <= w <= 1.5 for w in waits)
    assert len(set(waits)) > 1


def test_no_retry_waits_makes_waits_zero() -> None:
    policy = mp.Retry(on=Exception, wait_initial=5.0, wait_jitter=0.0)
    with no_retry_waits():
        assert policy.wait(3) == 0.0
    assert policy.wait(1) == 5.0


def refusal(retry_at: float | None) -> mp.CircuitOpenError:
    """An open breaker's refusal that lets calls through again at ``retry_at`` (``time.time()``; None: forced open)."""
    return mp.CircuitOpenError("circuit breaker 'db' is open", breaker="db", failure_rate=1.0, retry_at=retry_at)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (lambda: refusal(time.time() + 600), (500.0, 600.0)),  # past wait_max: an attempt sooner is refused too
        (lambda: refusal(time.time() - 5), (0.25, 0.25)),  # already past: the backoff
        (lambda: refusal(None), (0.25, 0.25)),  # forced open: no time to wait for
        (lambda: refusal(math.inf), (0.25, 0.25)),  # a refusal the task's code made, with no time that ends
        (lambda: refusal(math.nan), (0.25, 0.25)),
        (lambda: ConnectionError("reset"), (0.25, 0.25)),
        (lambda: None, (0.25, 0.25)),
    ],
    ids=["in ten minutes", "passed", "forced open", "infinite", "nan", "another error", "no error"],
)
def test_the_wait_after_a_circuit_breakers_refusal_lasts_until_it_admits_calls_again(
    error: Callable[[], BaseException | None], expected: tuple[float, float]
) -> None:
    # A retry on CircuitOpenError came back after its backoff, while the breaker was
    # still open: each attempt was refused at once, the retries spent in milliseconds.
    policy = mp.Retry(on=mp.CircuitOpenError, wait_initial=0.25, wait_max=5.0, wait_jitter=0.0)
    low, high = expected
    assert low <= policy._wait_after(1, error(), None) <= high
    with no_retry_waits():
        assert policy._wait_after(1, error(), None) == 0.0


def test_the_wait_for_a_circuit_breaker_keeps_its_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every task one open breaker refused waited for the same retry_at, the jitter lost
    # in max(backoff, remaining): they all came back at once as it turned half-open,
    # its few trial calls were taken, and the rest were refused again together.
    drawn: list[tuple[float, float]] = []

    def greatest(low: float, high: float) -> float:
        drawn.append((low, high))
        return high

    monkeypatch.setattr(random, "uniform", greatest)
    policy = mp.Retry(on=mp.CircuitOpenError, wait_initial=0.25, wait_max=5.0, wait_jitter=3.0)
    assert 602.0 < policy._wait_after(1, refusal(time.time() + 600), None) <= 603.0  # the breaker's time, then the jitter
    assert drawn and all(bounds == (0.0, 3.0) for bounds in drawn)
    steady = mp.Retry(on=mp.CircuitOpenError, wait_initial=0.25, wait_max=5.0, wait_jitter=0.0)
    assert 500.0 < steady._wait_after(1, refusal(time.time() + 600), None) <= 600.0  # no jitter asked: none added


class SleptEnough(BaseException):
    """Raised by a stand-in for ``time.sleep`` once the retry's wait was one the platform takes."""


@pytest.mark.timeout(30)
def test_a_retry_in_the_caller_waits_for_a_breaker_centuries_away_rather_than_fail_of_the_sleep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A refusal whose retry_at is in milliseconds (time.time() * 1000), with no timeout:
    # time.sleep refused the 54,000 years, and the caller got OverflowError in place of
    # the task's error. A wait sliced to what the platform takes waits, as the engine's do.
    sleep = time.sleep
    slept: list[float] = []

    def sliced(seconds: float) -> None:
        slept.append(seconds)
        if seconds > _retrying.LONGEST_SLEEP:
            sleep(seconds)  # the platform's own answer, at once: OverflowError
        raise SleptEnough

    monkeypatch.setattr(time, "sleep", sliced)
    policy = mp.Retry(on=mp.CircuitOpenError, attempts=2, timeout=None, wait_jitter=0.0)
    fn = _retrying._apply(policy, functools.partial(_raise, refusal(time.time() * 1000)))
    with pytest.raises(SleptEnough):
        fn()
    assert slept == [_retrying.LONGEST_SLEEP]


def _raise(error: BaseException) -> None:
    raise error


@pytest.mark.parametrize("kind", ["plain", "async def"])
def test_a_retry_in_the_caller_ends_at_once_where_the_breaker_stays_open_past_its_timeout(kind: str) -> None:
    # The next attempt waits until the refusal's retry_at; where that is past the
    # policy's timeout, none follows, and the note says why.
    policy = mp.Retry(on=mp.CircuitOpenError, attempts=5, timeout=5.0, wait_initial=0.01, wait_jitter=0.0)
    calls: list[int] = []

    def refused() -> str:
        calls.append(1)
        raise refusal(time.time() + 600)

    async def refused_async() -> str:
        return refused()

    fn = _retrying._apply(policy, refused if kind == "plain" else refused_async)
    with pytest.raises(mp.CircuitOpenError) as caught:
        fn() if kind == "plain" else asyncio.run(fn())
    assert len(calls) == 1
    assert "the retry policy's timeout of 5 s would pass before attempt 2" in "\n".join(caught.value.__notes__)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"on": int}, TypeError, "on must be an exception type"),
        ({"on": (ValueError, 3)}, TypeError, "on must hold exception types only"),
        # What to pass instead too: the message said what was wrong only.
        ({"on": ()}, ValueError, r"^on must name .*, got an empty tuple: name the errors .*on=\(ConnectionError, TimeoutError\)$"),
        ({"on": "ValueError"}, TypeError, "on must be"),
        ({"on": Exception, "attempts": 0}, ValueError, "attempts must be an int >= 1"),
        ({"on": Exception, "attempts": -1}, ValueError, "attempts"),
        ({"on": Exception, "attempts": -(10**5000)}, ValueError, r"attempts must be .*, got an int of about -10\*\*5000$"),
        ({"on": Exception, "attempts": 2.0}, TypeError, "attempts"),
        ({"on": Exception, "timeout": -1}, ValueError, "timeout"),
        ({"on": Exception, "wait_initial": float("nan")}, ValueError, "wait_initial"),
        ({"on": Exception, "wait_max": "1"}, TypeError, "wait_max"),
        ({"on": Exception, "wait_jitter": -0.1}, ValueError, "wait_jitter"),
        ({"on": Exception, "wait_exp_base": 0.5}, ValueError, "wait_exp_base"),
        # A factor, not seconds: the messages said "a number of seconds".
        ({"on": Exception, "wait_exp_base": "2"}, TypeError, r"wait_exp_base must be a number \(the growth factor"),
        ({"on": Exception, "wait_exp_base": float("inf")}, ValueError, "wait_exp_base must be a finite number >= 1 "),
        # Ints too large for a float: OverflowError, where infinity was refused.
        # None is what means no limit: the message did not say so.
        ({"on": Exception, "timeout": float("inf")}, ValueError, r"^timeout must be a finite number of seconds >= 0 or None, got inf$"),
        ({"on": Exception, "timeout": 10**400}, ValueError, r"timeout must be a finite .*, got an int of about 10\*\*400$"),
        ({"on": Exception, "wait_max": 10**400}, ValueError, "wait_max must be a finite"),
        # A first wait past the cap was cut to it, silently: Retry(wait_initial=100) waited 5 s each time.
        (
            {"on": Exception, "wait_initial": 100},
            ValueError,
            (
                r"^wait_initial must be <= wait_max .*, got wait_initial=100 and wait_max=5: every wait would be cut to 5 s\. "
                r"Pass wait_max=100 or more"
            ),
        ),
        ({"on": Exception, "wait_initial": 0.5, "wait_max": 0.25}, ValueError, r"wait_initial=0.5 and wait_max=0.25: "),
        ({"on": Exception, "wait_initial": -(10**400)}, ValueError, r"wait_initial .*, got an int of about -10\*\*400$"),
    ],
)
def test_bad_policy_names_the_argument(kwargs: dict[str, Any], error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        mp.Retry(**kwargs)


@pytest.mark.parametrize("backoff", ["exponential", "linear", "constant"])
def test_a_first_wait_as_long_as_the_cap_is_taken_and_retry_backoff_keeps_0_2s_cap(backoff: str) -> None:
    # Retry refuses a wait_initial past wait_max; one equal to it waits that long each time.
    assert [mp.Retry(on=Exception, wait_initial=100, wait_max=100, wait_jitter=0).wait(n) for n in (1, 2)] == [100, 100]
    # retry_backoff's documented cap of 0.2 stays: its calls keep working, every wait max_delay.
    decorated = mp.retry_backoff(max_attempts=3, backoff=backoff, initial_delay=120, max_delay=60)(abs)
    assert [decorated.__makeparallel_retry__.wait(n) for n in (1, 2)] == [60, 60]


def test_retry_option_must_be_a_policy() -> None:
    with pytest.raises(TypeError, match="retry must be a makeparallel.Retry"):
        mp.parallel(retry=3)


def test_policy_is_frozen() -> None:
    policy = mp.Retry(on=Exception)
    with pytest.raises(AttributeError):
        policy.attempts = 3  # type: ignore[misc]


# -- one handle, many attempts --------------------------------------------------------


@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_a_flaky_task_succeeds_on_a_later_attempt(backend: str, events: list[mp.TaskEvent]) -> None:
    flaky = Flaky(2)
    fn = mp.parallel(backend=backend, retry=mp.Retry(on=ConnectionError, attempts=5), name="flaky_ok")(flaky)
    mp.reset_metrics()
    with no_retry_waits():
        handle = fn()
        assert handle.get(timeout=30) == 3
    assert handle.attempts == 3
    retries = [e for e in events if e.kind == "retry" and e.task_id == handle.get_task_id()]
    assert [e.attempt for e in retries] == [1, 2]
    assert all(isinstance(e.error, ConnectionError) and e.wait == 0.0 for e in retries)
    assert [e.kind for e in events if e.task_id == handle.get_task_id()].count("finished") == 1
    metrics = mp.get_metrics("flaky_ok")
    assert metrics is not None
    assert (metrics.retried_tasks, metrics.retries, metrics.completed_tasks, metrics.total_tasks) == (1, 2, 1, 1)


def test_the_process_backend_retries_too(tmp_path: Any) -> None:
    fn = mp.parallel(backend="process", retry=mp.Retry(on=ConnectionError, attempts=4))(flaky_in_process)
    with no_retry_waits():
        handle = fn(str(tmp_path / "calls"), 2)
        assert handle.get(timeout=60) == 3
    assert handle.attempts == 3


class OutOfProcessThreads(ThreadPoolExecutor):
    """Threads the library takes for an executor elsewhere: each call travels pickled, as to a process."""

    _makeparallel_in_process = False


@contextlib.contextmanager
def executor_named(kind: str) -> Iterator[Executor]:
    executor: Executor = {
        "ThreadPoolExecutor": ThreadPoolExecutor,
        "executor elsewhere": OutOfProcessThreads,
        "ProcessPoolExecutor": ProcessPoolExecutor,
    }[kind](2)
    with executor:
        yield executor


@pytest.mark.parametrize("kind", ["ThreadPoolExecutor", "executor elsewhere", "ProcessPoolExecutor"])
def test_an_executor_given_as_the_backend_retries_too(kind: str, tmp_path: Any, events: list[mp.TaskEvent]) -> None:
    # Its task failed at its first attempt, whatever the policy, with a "retry" event told.
    with executor_named(kind) as executor:
        fn = mp.parallel(backend=executor, retry=mp.Retry(on=ConnectionError, attempts=4))(flaky_in_process)
        with no_retry_waits():
            handle = fn(str(tmp_path / "calls"), 2)
            assert handle.get(timeout=60) == 3
    assert handle.attempts == 3
    kinds = [e.kind for e in events if e.task_id == handle.get_task_id()]
    assert kinds[-1] == "finished" and kinds.count("retry") == 2


class SlowToHandBack(ThreadPoolExecutor):
    """A thread pool whose second ``submit`` hands its future back late, and whose third runs its call later.

    The second attempt runs, fails and is retried while its ``submit`` has not
    returned. The third ``submit`` returns once the second's sender is done,
    with a future that starts only once the third's sender is done too (as on
    a busy pool).
    """

    def __init__(self) -> None:
        super().__init__(2)
        self.submits = 0
        self.third_submitted = threading.Event()
        self.second_sender: threading.Thread | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submits += 1
        if self.submits == 2:
            self.second_sender = threading.current_thread()
            future = super().submit(fn, *args, **kwargs)
            assert self.third_submitted.wait(30)
            return future
        if self.submits == 3:
            assert self.second_sender is not None and self.second_sender is not threading.current_thread()
            self.third_submitted.set()
            self.second_sender.join(30)
            later: Future[Any] = Future()
            third_sender = threading.current_thread()
            threading.Thread(target=self._run_after, args=(third_sender, later, fn, args)).start()
            return later
        return super().submit(fn, *args, **kwargs)

    @staticmethod
    def _run_after(sender: threading.Thread, future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        sender.join(30)
        if future.set_running_or_notify_cancel():
            future.set_result(fn(*args))


def test_an_attempt_retried_before_its_submit_returned_leaves_the_next_attempt_running() -> None:
    # The second attempt's sender stored its late future over the third attempt's
    # place, and the third's future was cancelled unstarted: the task stayed pending.
    flaky = Flaky(2)
    with SlowToHandBack() as executor:
        fn = mp.parallel(backend=executor, retry=mp.Retry(on=ConnectionError, attempts=4))(flaky)
        with no_retry_waits():
            handle = fn()
            assert handle.get(timeout=10) == 3
    assert handle.attempts == 3


LATE = threading.Event()


def late_first_attempt() -> str:
    """An attempt made before ``LATE`` (the retry) waits for it, then ends; one made after it ends at once.

    Told apart by ``LATE``, not by a count of calls: the first attempt, not yet
    started on a busy executor at its timeout, never runs, and the retry is the
    first call.
    """
    if not LATE.is_set():
        LATE.wait(30)
        return "late"
    return "on time"


@pytest.mark.parametrize("kind", ["ThreadPoolExecutor", "executor elsewhere"])
def test_an_executor_attempt_that_timed_out_and_was_retried_has_its_outcome_dropped(
    kind: str, events: list[mp.TaskEvent]
) -> None:
    LATE.clear()
    retrying = threading.Event()

    def end_the_first_attempt_as_the_retry_waits(event: mp.TaskEvent) -> None:
        if event.kind == "retry":
            LATE.set()  # its outcome arrives while the task waits to retry, or after the retry started
            retrying.set()

    mp.add_task_listener(end_the_first_attempt_as_the_retry_waits)
    try:
        with executor_named(kind) as executor:
            retry = mp.Retry(on=mp.TaskTimeoutError, attempts=2, wait_initial=0.2, wait_jitter=0)
            # From the submission: the retry must be taken and return within it too, on a busy machine.
            fn = mp.parallel(backend=executor, timeout=1.0, retry=retry)(late_first_attempt)
            handle = fn()
            assert handle.get(timeout=30) == "on time"
            assert retrying.is_set()
    finally:
        mp.remove_task_listener(end_the_first_attempt_as_the_retry_waits)
        LATE.set()
    assert handle.attempts == 2
    assert handle.result() == "on time"  # the executor has ended both attempts by now


FIRST_TOLD = threading.Event()
SECOND_STARTED = threading.Event()


def fails_then_waits_for_the_first_to_be_told(path: str) -> str:
    """Its first attempt fails at once; the next waits until the first's outcome was told (attempts counted in a file)."""
    calls = count_call(path)
    if calls == 1:
        raise ConnectionError("the first attempt's late error")
    SECOND_STARTED.set()
    assert FIRST_TOLD.wait(30)
    return f"attempt {calls}"


@pytest.mark.timeout(60)
def test_an_executor_attempt_that_times_out_as_its_error_is_told_leaves_its_retry_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    # The first attempt failed, and timed out before its error was settled: the
    # retry started, and that late error, settled on it, retried it as it ran.
    # A third attempt ran beside the second, whose result was dropped.
    FIRST_TOLD.clear()
    SECOND_STARTED.clear()
    translate, future_done = ExecutorBackend.translate_error, ExecutorBackend._future_done

    def the_first_attempts(error: BaseException | None) -> bool:
        """Whether ``error``, read from a future, is the first attempt's: carried from the call, as every error elsewhere."""
        return isinstance(error, CarriedError) and str(error).startswith("ConnectionError:")

    def held_until_the_retry_started(self: ExecutorBackend, handle: Any, error: BaseException) -> BaseException:
        if the_first_attempts(error):
            assert SECOND_STARTED.wait(30)
        return translate(self, handle, error)

    def told(self: ExecutorBackend, handle: Any, future: Any) -> None:
        try:
            future_done(self, handle, future)
        finally:
            if the_first_attempts(future.exception()):
                FIRST_TOLD.set()

    monkeypatch.setattr(ExecutorBackend, "translate_error", held_until_the_retry_started)
    monkeypatch.setattr(ExecutorBackend, "_future_done", told)
    calls = tmp_path / "calls"
    with OutOfProcessThreads(2) as executor:
        retry = mp.Retry(on=(ConnectionError, mp.TaskTimeoutError), attempts=3)
        fn = mp.parallel(backend=executor, timeout=2.0, retry=retry)(fails_then_waits_for_the_first_to_be_told)
        with no_retry_waits():
            handle = fn(str(calls))
            assert handle.get(timeout=30) == "attempt 2"
    assert handle.attempts == 2 and calls.read_text() == "xx"


def waits_for_late() -> None:
    LATE.wait(30)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("end", ["cancel", "shutdown"])
def test_an_executor_task_ended_as_it_waits_to_retry_a_timeout_leaves_nothing_behind(end: str) -> None:
    # The attempt that timed out kept its place (its future) through the wait: the
    # cancel or the shutdown took that future for the task's own, to be dropped by
    # an _abandoned() that never follows the end of a waiting task, and the
    # executor's adapter kept the handle and the future for good.
    LATE.clear()
    retrying = threading.Event()

    def tell(event: mp.TaskEvent) -> None:
        if event.kind == "retry":
            retrying.set()

    mp.add_task_listener(tell)
    try:
        with OutOfProcessThreads(1) as executor:
            retry = mp.Retry(on=mp.TaskTimeoutError, attempts=3, timeout=None, wait_initial=600, wait_max=600, wait_jitter=0)
            handle = mp.parallel(backend=executor, timeout=0.1, retry=retry)(waits_for_late)()
            assert retrying.wait(30)
            if end == "cancel":
                assert handle.cancel()
            else:
                assert mp.shutdown(timeout_secs=30) is True
            assert handle.done()
            adapter = _runtime._adapters[id(executor)]
            LATE.set()  # the attempt that timed out ends; the executor's shutdown waits for it
    finally:
        mp.remove_task_listener(tell)
        mp.reset_shutdown()
        LATE.set()
    assert handle.attempts == 1
    # The deadline thread drops the timed-out attempt's future from there just after it
    # told the retry (the cancel may come first): kept for good, it never left.
    assert wait_until(lambda: adapter._abandoning == {}, 10)  # type: ignore[attr-defined]


def record_and_wait(path: str) -> None:
    """Counts its calls in a file, then waits for ``LATE``."""
    count_call(path)
    LATE.wait(30)


def test_attempts_that_timed_out_queued_on_an_executor_never_run(tmp_path: Any) -> None:
    # Each attempt that timed out stayed queued behind the first on the one thread,
    # and ran after the task had ended.
    LATE.clear()
    calls = tmp_path / "calls"
    try:
        with OutOfProcessThreads(1) as executor:
            retry = mp.Retry(on=mp.TaskTimeoutError, attempts=3, wait_initial=0, wait_jitter=0)
            handle = mp.parallel(backend=executor, timeout=0.2, retry=retry)(record_and_wait)(str(calls))
            assert isinstance(handle.exception(timeout=30), mp.TaskTimeoutError)
            assert handle.attempts == 3
            LATE.set()  # the first attempt ends; the executor's shutdown waits for what it still holds
    finally:
        LATE.set()
    assert calls.read_text() == "x"


SECOND_RUNS = threading.Event()
SECOND_MAY_END = threading.Event()


def late_then_held(path: str) -> None:
    """Its first attempt waits for ``LATE``, deaf to its timeout; the next says it runs, then waits too."""
    if count_call(path) == 1:
        assert LATE.wait(30)
        return
    SECOND_RUNS.set()
    assert SECOND_MAY_END.wait(30)


class TakesTheRetryAsTheFirstEnds(OutOfProcessThreads):
    """Threads elsewhere whose second ``submit`` returns once the first call ended, and its end was told."""

    def __init__(self) -> None:
        super().__init__(2)
        self.futures: list[Future[Any]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        self.futures.append(future)
        if len(self.futures) == 2:
            assert SECOND_RUNS.wait(30)
            told = threading.Event()
            LATE.set()  # the first call ends; the second, its retry, runs on
            self.futures[0].add_done_callback(lambda _: told.set())  # after the adapter's own
            assert told.wait(30)
        return future


@pytest.mark.timeout(60)
def test_an_executor_attempt_that_ends_as_its_retry_is_sent_leaves_cancel_with_timeout_waiting_for_the_retry(
    tmp_path: Any, events: list[mp.TaskEvent]
) -> None:
    # The future of the attempt that timed out was still the last one sent until the
    # retry's submit returned: its end then marked the task's code as returned, and
    # cancel_with_timeout() said it had stopped at once, while the retry's still ran.
    LATE.clear()
    SECOND_RUNS.clear()
    SECOND_MAY_END.clear()
    with TakesTheRetryAsTheFirstEnds() as executor:
        try:
            retry = mp.Retry(on=mp.TaskTimeoutError, attempts=2)
            fn = mp.parallel(backend=executor, timeout=1.0, retry=retry)(late_then_held)
            with no_retry_waits():
                handle = fn(str(tmp_path / "calls"))
                # The retry's submit returned (its "started" is told after), the first call ended.
                assert wait_until(lambda: [e.kind for e in events].count("started") == 2, 30)
                assert executor.futures[0].done() and not executor.futures[1].done()  # the retry's call runs
                assert handle.cancel_with_timeout(0.05) is False
            SECOND_MAY_END.set()
            assert handle.cancel_with_timeout(30) is True
        finally:
            LATE.set()
            SECOND_RUNS.set()
            SECOND_MAY_END.set()


def test_an_executor_that_runs_a_call_as_it_is_submitted_holds_up_no_timeout(gate: threading.Event) -> None:
    # The next attempt was sent from the deadline thread, so it ran there, and no
    # other task's timeout could fire until it ended.
    @mp.parallel(backend="thread", timeout=0.1)
    def poll() -> None:
        while not gate.wait(0.005):
            mp.check_cancelled()

    attempts = []

    def fail_then_time_another_task_out() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("first attempt")
        return type(poll().exception(timeout=10)).__name__

    with mp.Executor("sync") as executor:
        retry = mp.Retry(on=ConnectionError, attempts=2, wait_initial=0, wait_jitter=0)
        handle = mp.parallel(backend=executor, retry=retry)(fail_then_time_another_task_out)()
        assert handle.get(timeout=30) == "TaskTimeoutError"


def test_a_sync_attempt_that_outlives_its_timeout_is_retried_in_the_caller(events: list[mp.TaskEvent]) -> None:
    # The retry was decided on the deadline thread, where the caller's running of it
    # could not be seen: the task failed after one attempt, the caller still in it.
    retried = threading.Event()
    attempts = []

    def tell(event: mp.TaskEvent) -> None:
        if event.kind == "retry":
            retried.set()

    # The retry must return within the timeout too: room for it on a busy machine.
    @mp.parallel(backend="sync", timeout=1.0, retry=mp.Retry(on=mp.TaskTimeoutError, attempts=2))
    def deaf_then_quick() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            retried.wait(30)  # deaf to the timeout: no check_cancelled()
            return "stale"
        return "fresh"

    mp.add_task_listener(tell)
    try:
        with no_retry_waits():
            handle = deaf_then_quick()
    finally:
        mp.remove_task_listener(tell)
    assert handle.get(timeout=0) == "fresh"
    assert (handle.attempts, len(attempts)) == (2, 2)
    kinds = [e.kind for e in events if e.task_id == handle.get_task_id()]
    assert kinds.count("retry") == 1 and kinds[-1] == "finished"


@pytest.mark.timeout(60)
def test_a_process_attempt_killed_at_its_timeout_before_a_retry_counts_as_timed_out() -> None:
    # The handle waits for the retry, not timed out, as the pool kills the attempt: the
    # restart was counted as a cancel.
    fn = mp.parallel(backend="process", timeout=0.3, retry=mp.Retry(on=mp.TaskTimeoutError, attempts=2))(time.sleep)
    before = mp.get_process_pool_info()["worker_restart_reasons"]
    with no_retry_waits():
        handle = fn(30)
        with pytest.raises(mp.TaskTimeoutError) as caught:
            handle.get(timeout=30)
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "2 attempt(s) failed: attempt 1: TaskTimeoutError after " in notes, notes
    assert "; attempt 2: TaskTimeoutError after " in notes, notes

    def counted(reason: str) -> int:
        return mp.get_process_pool_info()["worker_restart_reasons"].get(reason, 0) - before.get(reason, 0)

    assert handle.attempts == 2
    assert wait_until(lambda: counted("timed out") == 2, 30)  # each counted once its worker is reaped
    assert counted("cancelled") == 0


@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_the_last_attempts_error_comes_back_with_a_note_of_every_attempt(backend: str) -> None:
    flaky = Flaky(10)
    fn = mp.parallel(backend=backend, retry=mp.Retry(on=ConnectionError, attempts=3))(flaky)
    with no_retry_waits():
        handle = fn()
        with pytest.raises(ConnectionError, match="attempt 3 failed") as caught:
            handle.get(timeout=30)
    assert handle.attempts == 3 and flaky.calls == 3
    note = "\n".join(caught.value.__notes__)
    assert "3 attempt(s) failed" in note
    for n in (1, 2, 3):
        assert f"attempt {n}: ConnectionError after" in note


def test_an_error_not_in_on_ends_the_retries_and_is_listed() -> None:
    calls = iter([ConnectionError("first"), ValueError("second")])

    @mp.parallel(retry=mp.Retry(on=ConnectionError, attempts=5))
    def work() -> None:
        raise next(calls)

    with no_retry_waits():
        handle = work()
        with pytest.raises(ValueError, match="second") as caught:
            handle.get(timeout=30)
    assert handle.attempts == 2
    assert "attempt 2: ValueError" in "\n".join(caught.value.__notes__)


def test_the_retry_timeout_stops_before_the_attempts_do() -> None:
    flaky = Flaky(10)
    fn = mp.parallel(retry=mp.Retry(on=ConnectionError, attempts=100, timeout=0.0))(flaky)
    handle = fn()
    with pytest.raises(ConnectionError):
        handle.get(timeout=30)
    assert handle.attempts == 1


@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_the_note_says_the_retry_timeout_stopped_the_retries(backend: str) -> None:
    """Stopped by the policy's overall timeout, the note says so, as it says a shutdown stopped them."""
    flaky = Flaky(10)
    policy = mp.Retry(on=ConnectionError, attempts=10, timeout=1.0, wait_initial=60.0, wait_max=60.0, wait_jitter=0.0)
    handle = mp.parallel(backend=backend, retry=policy)(flaky)()
    with pytest.raises(ConnectionError) as caught:
        handle.get(timeout=30)
    assert handle.attempts == 1 and flaky.calls == 1
    note = "\n".join(caught.value.__notes__)
    assert "1 attempt(s) failed: attempt 1: ConnectionError after " in note, note
    assert "; not retried again: the retry policy's timeout of 1 s would pass before attempt 2" in note, note
    assert "after a wait of 60.000 s" in note, note


def test_state_is_per_call() -> None:
    """Two calls of one function count their own attempts (tenacity shares them)."""
    counts: dict[int, int] = {1: 0, 2: 0}

    @mp.parallel(retry=mp.Retry(on=ConnectionError, attempts=4))
    def work(key: int, failures: int) -> int:
        counts[key] += 1
        if counts[key] <= failures:
            raise ConnectionError(key)
        return counts[key]

    with no_retry_waits():
        one, two = work(1, 3), work(2, 1)
        assert (one.get(timeout=30), two.get(timeout=30)) == (4, 2)
    assert (one.attempts, two.attempts) == (4, 2)


def test_failures_not_retried_without_a_policy_keep_attempts_at_one() -> None:
    @mp.parallel
    def boom() -> None:
        raise ConnectionError("once")

    handle = boom()
    with pytest.raises(ConnectionError):
        handle.get(timeout=30)
    assert handle.attempts == 1
    assert not any("attempt(s) failed" in n for n in getattr(handle.exception(), "__notes__", []))


# -- waits hold no worker ----------------------------------------------------------------


def test_waiting_retries_hold_no_worker_and_cancel_cleanly(events: list[mp.TaskEvent]) -> None:
    resize(2)
    all_waiting = threading.Event()
    waiting: set[int] = set()

    def note_retry(event: mp.TaskEvent) -> None:
        if event.kind == "retry" and event.name == "always_down":
            waiting.add(event.task_id)
            if len(waiting) == 20:
                all_waiting.set()

    mp.add_task_listener(note_retry)
    try:

        @mp.parallel(
            name="always_down",
            retry=mp.Retry(on=ConnectionError, attempts=3, timeout=None, wait_initial=600, wait_max=600, wait_jitter=0),
        )
        def always_down() -> None:
            raise ConnectionError("down")

        @mp.parallel
        def other_work(x: int) -> int:
            return x * 2

        handles = [always_down() for _ in range(20)]
        assert all_waiting.wait(30)
        for handle in handles:
            assert handle.status == "waiting to retry"
            assert not handle.running() and not handle.done()
            assert handle.attempts == 1
        # The pool of 2 serves other work meanwhile, from its workers (wait(), never inline).
        others = [other_work(i) for i in range(10)]
        assert mp.wait(others, timeout=30).not_done == set()
        assert [h.result() for h in others] == [i * 2 for i in range(10)]
        assert mp.get_thread_pool_info()["busy_threads"] == 0
        with pytest.raises(mp.TaskTimeoutError, match="waiting to retry"):
            handles[0].get(timeout=0.01)
        for handle in handles:
            assert handle.cancel()
        for handle in handles:
            assert handle.cancelled()
            with pytest.raises(mp.TaskCancelledError):
                handle.get()
        assert handles[0].elapsed_time() > 0
    finally:
        mp.remove_task_listener(note_retry)


def test_a_retry_resumes_from_the_heap_after_its_wait() -> None:
    """A real (short) wait: the deadline thread queues the next attempt; must finish, however slow."""
    flaky = Flaky(1)
    fn = mp.parallel(retry=mp.Retry(on=ConnectionError, attempts=2, wait_initial=0.05, wait_jitter=0))(flaky)
    handle = fn()
    assert mp.wait([handle], timeout=30).not_done == set()
    assert handle.result() == 2 and handle.attempts == 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("timeout", [None, 30.0])
def test_wait_waits_for_the_end_of_a_task_queued_again(gate: threading.Event, timeout: float | None) -> None:
    # Its waiters are woken as the next attempt is queued (to run it, where they may):
    # wait() took that for the task's end, and returned True as the retry ran.
    first_may_fail = threading.Event()
    attempts: list[int] = []

    @mp.parallel(retry=mp.Retry(on=ConnectionError, attempts=2))
    def fails_then_waits() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            assert first_may_fail.wait(30)
            raise ConnectionError("first attempt")
        assert gate.wait(30)
        return "second attempt"

    seen: list[tuple[bool, bool]] = []
    with no_retry_waits():
        handle = fails_then_waits()
        assert wait_until(lambda: handle.status == "running", 10)
        waiter = threading.Thread(target=lambda: seen.append((handle.wait(timeout), handle.done())))
        waiter.start()
        assert wait_until(lambda: handle._waiters is not None, 10)  # it waits for the first attempt
        first_may_fail.set()
        assert wait_until(lambda: len(attempts) == 2, 10)
        gate.set()
        waiter.join(30)
    assert seen == [(True, True)]  # whether it ended, and whether it had as wait() said so
    assert handle.result() == "second attempt"


def test_a_parent_waiting_for_a_retrying_child_runs_its_attempts_itself(gate: threading.Event) -> None:
    """One worker, held by the parent: the child's next attempt must not wait for a free worker."""
    resize(1)
    flaky = Flaky(2)
    child = mp.parallel(retry=mp.Retry(on=ConnectionError, attempts=3, wait_initial=0.01, wait_jitter=0))(flaky)

    @mp.parallel
    def parent() -> int:
        return child().get()

    assert parent().get(timeout=30) == 3


# -- the task's own timeout ------------------------------------------------------------


def test_a_timed_out_attempt_is_retried_when_on_names_task_timeout_error(gate: threading.Event) -> None:
    started = threading.Event()
    attempts = []

    # The retry must return within the timeout too: room for it on a busy machine.
    @mp.parallel(timeout=1.0, retry=mp.Retry(on=(mp.TaskTimeoutError,), attempts=2))
    def slow_then_fast() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            started.set()
            gate.wait(30)  # the stale first attempt: its outcome must be dropped
            return "stale"
        return "fresh"

    with no_retry_waits():
        handle = slow_then_fast()
        assert handle.get(timeout=30) == "fresh"
    assert handle.attempts == 2
    gate.set()
    assert wait_until(lambda: mp.get_thread_pool_info()["busy_threads"] == 0)
    assert handle.result() == "fresh"
    assert mp.get_thread_pool_info()["stuck_threads"] == 0


def test_the_last_attempts_timeout_comes_back_with_a_note_of_every_attempt(gate: threading.Event) -> None:
    # The note was added to a failed task's error only: a last attempt that timed out lost the history.
    @mp.parallel(timeout=0.05, retry=mp.Retry(on=(mp.TaskTimeoutError,), attempts=2))
    def stuck() -> None:
        gate.wait(30)

    with no_retry_waits():
        handle = stuck()
        with pytest.raises(mp.TaskTimeoutError) as caught:
            handle.get(timeout=30)
    gate.set()
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "2 attempt(s) failed: attempt 1: TaskTimeoutError after " in notes, notes
    assert "; attempt 2: TaskTimeoutError after " in notes, notes


@pytest.mark.timeout(60)
def test_an_attempt_that_timed_out_and_was_retried_is_told_to_stop(gate: threading.Event) -> None:
    # Only the last attempt was: check_cancelled() read the handle, running again or waiting
    # to retry, and each earlier attempt ran on to its end, holding a worker thread for good
    # where a dependency hung.
    stopped: list[str] = []

    @mp.parallel(timeout=0.05, retry=mp.Retry(on=(mp.TaskTimeoutError,), attempts=2))
    def polls() -> None:
        try:
            while not gate.wait(0.005):  # a poll, as a loop over units of work checks between them
                mp.check_cancelled()
        except mp.TaskTimeoutError as error:
            stopped.append(str(error))
            raise

    with no_retry_waits():
        handle = polls()
        with pytest.raises(mp.TaskTimeoutError):
            handle.get(timeout=30)
    assert wait_until(lambda: len(stopped) == 2, 10), stopped
    # The first was stopped as it was retried, not at the task's end with the last.
    assert any("this attempt ran past its timeout of 0.05 s and the task was retried" in message for message in stopped)
    assert wait_until(lambda: mp.get_thread_pool_info()["busy_threads"] == 0, 10)


@pytest.mark.timeout(60)
def test_a_late_attempt_that_ends_before_its_retry_starts_leaves_the_retry_alone(
    monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    # Stopped at its check during the retry's wait, the late attempt found its outcome
    # current (no other attempt had started); settled once the retry ran, that outcome
    # failed the task with the late attempt's timeout, and the retry was stopped.
    resize(2)
    second_started = threading.Event()
    calls: list[int] = []

    @mp.parallel(timeout=1.0, retry=mp.Retry(on=(mp.TaskTimeoutError,), attempts=2, wait_initial=0.5, wait_jitter=0))
    def late_then_held() -> str:
        calls.append(1)
        if len(calls) == 1:
            while not gate.wait(0.005):
                mp.check_cancelled()  # raises once it was retried, during the retry's wait
        second_started.set()
        assert gate.wait(30)
        return "second"

    execute = AsyncHandle._execute
    attempts: list[int] = []

    def first_settled_once_the_retry_started(handle: AsyncHandle[Any], here: dict[str, Any]) -> tuple[Any, ...]:
        attempts.append(1)
        first = len(attempts) == 1
        outcome = execute(handle, here)
        if first:  # the late attempt: ended, its outcome not settled yet
            assert second_started.wait(30)
        return outcome

    monkeypatch.setattr(AsyncHandle, "_execute", first_settled_once_the_retry_started)
    handle = late_then_held()
    assert second_started.wait(30)
    # The late attempt's worker settled its outcome and went idle; the retry runs on.
    assert wait_until(lambda: mp.get_thread_pool_info()["idle_threads"] >= 1, 10), mp.get_thread_pool_info()
    assert handle.status == "running"
    gate.set()
    assert handle.get(timeout=30) == "second"
    assert handle.attempts == 2


@pytest.mark.timeout(60)
def test_a_late_attempt_that_ends_as_its_retry_is_claimed_leaves_the_retry_alone(gate: threading.Event) -> None:
    # A worker claims a task (running) in the lock round that settles its last one,
    # and sets the attempt's start only once that one's callbacks ran. Settled in
    # between, the late attempt found its start still the task's: its outcome
    # ended the task, and the retry claimed never ran.
    resize(1)
    first_may_end = threading.Event()
    attempts: list[int] = []

    # Room for the retry to return on a busy machine, its thread starved of the GIL
    # by a loaded run's other threads: it must not time out too.
    @mp.parallel(timeout=3.0, retry=mp.Retry(on=mp.TaskTimeoutError, attempts=2))
    def deaf_then_quick() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            assert first_may_end.wait(30)  # deaf to its timeout: no check_cancelled()
            return "stale"
        return "fresh"

    @mp.parallel
    def holds_the_other_worker() -> None:
        assert gate.wait(30)

    def end_the_late_attempt(_: None) -> None:
        # On the worker that claimed the retry as it settled this task, before it starts it.
        first_may_end.set()
        # The late attempt's worker settled, no longer stuck, and retired as a surplus one.
        assert wait_until(lambda: mp.get_thread_pool_info()["live_threads"] == 1, 10), mp.get_thread_pool_info()

    with no_retry_waits():
        handle = deaf_then_quick()
        assert wait_until(lambda: handle.status == "running", 10)
        # Queued behind the late attempt: the worker that replaces it takes this first, and the retry waits.
        holds_the_other_worker().on_complete(end_the_late_attempt)
        assert wait_until(lambda: handle.status == "pending" and handle.attempts == 1, 10)  # retried, queued
        assert mp.get_thread_pool_info()["stuck_threads"] == 1
        gate.set()
        assert handle.get(timeout=30) == "fresh"
    assert handle.attempts == 2 and len(attempts) == 2
    assert mp.get_thread_pool_info()["stuck_threads"] == 0


@pytest.mark.timeout(60)
def test_a_late_attempt_that_ends_as_its_retry_runs_leaves_cancel_with_timeout_waiting_for_the_retry(
    gate: threading.Event,
) -> None:
    # The late attempt's end marked the task's code as returned: cancel_with_timeout()
    # said the code had stopped at once, while the retry's still ran.
    resize(2)
    first_may_end = threading.Event()
    second_started = threading.Event()
    attempts: list[int] = []

    @mp.parallel(timeout=0.2, retry=mp.Retry(on=mp.TaskTimeoutError, attempts=2))
    def deaf() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            assert first_may_end.wait(30)  # deaf to its timeout: no check_cancelled()
            return
        second_started.set()
        assert gate.wait(30)

    with no_retry_waits():
        handle = deaf()
        assert second_started.wait(30)
        first_may_end.set()
        assert wait_until(lambda: mp.get_thread_pool_info()["busy_threads"] == 1, 10)  # the late attempt ended
        assert handle.cancel_with_timeout(0.05) is False
    gate.set()
    assert handle.cancel_with_timeout(30) is True


@pytest.mark.timeout(60)
def test_a_retry_after_a_timeout_runs_beside_the_late_attempt_on_a_full_pool(gate: threading.Event) -> None:
    # Only a timeout with no retry counted the late attempt's worker as stuck, and had
    # a replacement start: on a full pool the retry waited behind the late attempt,
    # pending for good where that attempt never returned.
    resize(1)
    attempts: list[int] = []

    # The retry must return within the timeout too: room for it on a busy machine.
    @mp.parallel(timeout=1.0, retry=mp.Retry(on=mp.TaskTimeoutError, attempts=2))
    def deaf_then_quick() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            assert gate.wait(30)  # deaf to its timeout: no check_cancelled()
            return "stale"
        return "fresh"

    with no_retry_waits():
        handle = deaf_then_quick()
        assert handle.get(timeout=20) == "fresh", (handle.status, mp.get_thread_pool_info())
    assert handle.attempts == 2 and len(attempts) == 2
    info = mp.get_thread_pool_info()
    assert (info["stuck_threads"], info["live_threads"]) == (1, 2), info
    gate.set()
    # Its attempt over, the late worker is no longer stuck, and retires as a surplus one.
    assert wait_until(lambda: mp.get_thread_pool_info()["stuck_threads"] == 0, 10), mp.get_thread_pool_info()
    assert wait_until(lambda: mp.get_thread_pool_info()["live_threads"] == 1, 10), mp.get_thread_pool_info()
    assert handle.result() == "fresh"


@pytest.mark.timeout(60)
def test_a_late_attempt_counts_as_stuck_from_its_retry_until_it_returns(gate: threading.Event) -> None:
    # Counted during the retry's wait, and after a cancel ends the task: the late attempt
    # still holds its worker; its return, outcome dropped, gives the place back.
    resize(1)
    started = threading.Event()

    @mp.parallel(timeout=0.2, retry=mp.Retry(on=mp.TaskTimeoutError, attempts=2, wait_initial=30, wait_max=30, wait_jitter=0))
    def deaf() -> str:
        started.set()
        assert gate.wait(30)
        return "stale"

    handle = deaf()
    assert started.wait(10)
    assert wait_until(lambda: handle.status == "waiting to retry", 10), handle.status
    assert mp.get_thread_pool_info()["stuck_threads"] == 1
    assert handle.cancel()
    assert mp.get_thread_pool_info()["stuck_threads"] == 1  # the cancel does not end the late attempt
    gate.set()
    assert wait_until(lambda: mp.get_thread_pool_info()["stuck_threads"] == 0, 10), mp.get_thread_pool_info()
    assert handle.status == "cancelled"


def deaf_to_its_first_two_timeouts(release: list[threading.Event]) -> mp.ParallelFunction[[], int]:
    """A task whose first two attempts outlast their timeout, each until its event in ``release``; it returns its attempt."""
    attempts: list[int] = []
    lock = threading.Lock()

    # The last attempt must return within the timeout too: room for it on a busy machine.
    @mp.parallel(timeout=1.0, retry=mp.Retry(on=mp.TaskTimeoutError, attempts=3))
    def deaf_twice() -> int:
        with lock:
            attempts.append(1)
            attempt = len(attempts)
        if attempt <= 2:
            assert release[attempt - 1].wait(30)  # deaf to its timeout: no check_cancelled()
        return attempt

    return deaf_twice


@pytest.mark.timeout(60)
def test_each_late_attempt_of_a_task_holds_its_own_worker() -> None:
    # Two attempts in a row past their timeout, deaf to it: the third runs beside both,
    # and each late worker stops counting as stuck when its own attempt returns.
    resize(2)
    release = [threading.Event(), threading.Event()]
    deaf_twice = deaf_to_its_first_two_timeouts(release)

    try:
        with no_retry_waits():
            handle = deaf_twice()
            assert handle.get(timeout=20) == 3, (handle.status, mp.get_thread_pool_info())
        info = mp.get_thread_pool_info()
        assert (info["stuck_threads"], info["live_threads"]) == (2, 3), info
        release[1].set()
        assert wait_until(lambda: mp.get_thread_pool_info()["stuck_threads"] == 1, 10), mp.get_thread_pool_info()
        release[0].set()
        assert wait_until(lambda: mp.get_thread_pool_info()["stuck_threads"] == 0, 10), mp.get_thread_pool_info()
        assert wait_until(lambda: mp.get_thread_pool_info()["live_threads"] == 2, 10), mp.get_thread_pool_info()
    finally:
        for event in release:
            event.set()
    assert handle.result() == 3 and handle.attempts == 3


@pytest.mark.timeout(60)
def test_a_retry_waits_for_a_late_attempt_once_the_pool_replaced_as_many_as_its_size() -> None:
    # The pool replaces at most as many stuck threads as its size, late attempts as any:
    # one thread, two attempts in a row deaf to their timeout, and the third waits
    # queued until one of them returns (the docs said that the retry runs at once).
    resize(1)
    release = [threading.Event(), threading.Event()]
    deaf_twice = deaf_to_its_first_two_timeouts(release)

    try:
        with no_retry_waits():
            handle = deaf_twice()
            assert wait_until(lambda: handle.status == "pending" and handle.attempts == 2, 20), handle.status
            info = mp.get_thread_pool_info()
            assert (info["stuck_threads"], info["live_threads"], info["queued_tasks"]) == (2, 2, 1), info
            release[0].set()  # its worker, no longer stuck, takes the third attempt
            assert handle.get(timeout=20) == 3
        release[1].set()
        assert wait_until(lambda: mp.get_thread_pool_info()["stuck_threads"] == 0, 10), mp.get_thread_pool_info()
        assert wait_until(lambda: mp.get_thread_pool_info()["live_threads"] == 1, 10), mp.get_thread_pool_info()
    finally:
        for event in release:
            event.set()
    assert handle.attempts == 3


def run_with_its_claimed_retry_held_until_the_first_deadline(
    monkeypatch: pytest.MonkeyPatch, **options: Any
) -> AsyncHandle[str]:
    """A task whose first attempt fails at once, and whose retry, claimed, starts only once that attempt's deadline came; its handle, ended.

    ``options``: more of the task's ``@parallel`` options (its circuit breaker).
    """
    resize(1)
    expired = threading.Event()
    attempts: list[int] = []

    @mp.parallel(timeout=0.2, retry=mp.Retry(on=ConnectionError, attempts=2), **options)
    def fails_then_quick() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("first attempt")
        return "second"

    expire, execute = AsyncHandle._expire, AsyncHandle._execute

    def told_once_expired(handle: AsyncHandle[Any]) -> None:
        expire(handle)
        expired.set()

    def second_held_until_the_first_deadline(handle: AsyncHandle[Any], here: dict[str, Any]) -> tuple[Any, ...]:
        if attempts:  # the retry, claimed: the first attempt's deadline comes now
            assert expired.wait(30)
        return execute(handle, here)

    monkeypatch.setattr(AsyncHandle, "_expire", told_once_expired)
    monkeypatch.setattr(AsyncHandle, "_execute", second_held_until_the_first_deadline)
    with no_retry_waits():
        handle = fails_then_quick()
        assert mp.wait([handle], timeout=30).not_done == set()
    return handle


@pytest.mark.timeout(60)
def test_the_deadline_of_an_attempt_that_failed_leaves_its_claimed_retry_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first attempt fails at once and its retry is claimed, not yet started, as that
    # attempt's deadline comes: the deadline read the first start as the task's, and
    # timed out the retry before it ran (on a worker, counted as stuck for it too).
    handle = run_with_its_claimed_retry_held_until_the_first_deadline(monkeypatch)
    assert handle.result() == "second" and handle.attempts == 2
    assert mp.get_thread_pool_info()["stuck_threads"] == 0


@pytest.mark.timeout(60)
def test_the_deadline_of_an_attempt_that_failed_asks_no_breaker_of_its_claimed_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    # The deadline asks the breaker's predicate outside the lock before it times a task
    # out. It asked of a retry claimed, not yet started, which the check under the lock
    # then left alone: the predicate judged a timeout that never happened.
    judged: list[str] = []

    def judges(error: BaseException) -> bool:
        judged.append(type(error).__name__)
        return True

    breaker = mp.CircuitBreaker("deadline-of-a-failed-attempt", on=judges, min_calls=100)
    handle = run_with_its_claimed_retry_held_until_the_first_deadline(monkeypatch, circuit_breaker=breaker)
    assert handle.result() == "second" and handle.attempts == 2
    assert judged == ["ConnectionError"]  # the first attempt's error only


@pytest.mark.timeout(60)
def test_the_progress_of_an_attempt_that_timed_out_and_was_retried_is_dropped(gate: threading.Event) -> None:
    # Its code goes on, as its retry runs: its reports overwrote the retry's progress.
    resize(2)
    first_may_report = threading.Event()
    first_reported = threading.Event()
    second_reported = threading.Event()
    attempts: list[int] = []

    @mp.parallel(timeout=0.2, retry=mp.Retry(on=mp.TaskTimeoutError, attempts=2))
    def deaf() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            assert first_may_report.wait(30)  # deaf to its timeout: no check_cancelled()
            mp.report_progress(0.9, "the late attempt")
            first_reported.set()
            return
        mp.report_progress(0.1, "the retry")
        second_reported.set()
        assert gate.wait(30)

    with no_retry_waits():
        handle = deaf()
        assert second_reported.wait(30)
        first_may_report.set()
        assert first_reported.wait(30)
        assert (handle.get_progress(), handle.get_progress_message()) == (0.1, "the retry")
    gate.set()
    assert handle.cancel_with_timeout(30) is True


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("backend", "first_ends_by"),
    [("thread", "timing out"), ("thread", "failing"), ("sync", "failing")],
    ids=["thread-timed-out", "thread-failed", "sync-failed"],
)
def test_the_progress_of_a_thread_an_earlier_attempt_started_is_dropped(
    backend: str, first_ends_by: str, gate: threading.Event
) -> None:
    # Such a thread reports by the task's id (report_progress(task_id=...)), which every attempt
    # shares: its reports, late, overwrote the retry's progress as the late attempt's own did.
    resize(2)
    helper_may_report = threading.Event()
    helper_reported = threading.Event()
    helpers: list[threading.Thread] = []
    seen_by_the_retry: list[tuple[float, str | None]] = []
    given_ids: list[Any] = []

    def report_late(task_id: int) -> None:
        assert helper_may_report.wait(30)
        mp.report_progress(0.9, "the earlier attempt's thread", task_id=task_id)
        helper_reported.set()

    @mp.parallel(
        backend=backend,
        timeout=0.2 if first_ends_by == "timing out" else None,
        retry=mp.Retry(on=(ConnectionError, mp.TaskTimeoutError), attempts=2),
    )
    def reports_from_a_thread() -> None:
        if not helpers:
            given_ids.append(mp.get_current_task_id())
            helper = threading.Thread(target=report_late, args=(given_ids[0],))
            helpers.append(helper)
            helper.start()
            if first_ends_by == "timing out":
                assert gate.wait(30)  # deaf to its timeout: no check_cancelled()
                return
            raise ConnectionError("the first attempt failed")
        mp.report_progress(0.1, "the retry")
        helper_may_report.set()
        assert helper_reported.wait(30)
        task = current_task()
        assert task is not None
        seen_by_the_retry.append((task.get_progress(), task.get_progress_message()))

    with no_retry_waits():
        handle = reports_from_a_thread()
        handle.get(timeout=30)
    gate.set()
    helpers[0].join(30)
    assert seen_by_the_retry == [(0.1, "the retry")]
    assert handle.attempts == 2
    # The id an attempt gives out is the task's id, and travels as a plain int.
    given = given_ids[0]
    assert given == handle.get_task_id() and repr(given) == repr(handle.get_task_id())
    assert type(pickle.loads(pickle.dumps(given))) is int


@pytest.mark.timeout(60)
def test_an_id_a_late_attempt_asks_for_after_its_retry_started_reports_nothing() -> None:
    # The attempt timed out and goes on; asked now, its id is still its own attempt's, not the
    # retry's: it was read from the handle's current start, and its thread's reports counted.
    resize(2)
    retry_running = threading.Event()
    helper_reported = threading.Event()
    helpers: list[threading.Thread] = []
    seen_by_the_retry: list[tuple[float, str | None]] = []

    def report(task_id: int) -> None:
        mp.report_progress(0.9, "the late attempt's thread", task_id=task_id)
        helper_reported.set()

    @mp.parallel(timeout=0.2, retry=mp.Retry(on=mp.TaskTimeoutError, attempts=2))
    def asks_late() -> None:
        if not helpers:
            helpers.append(threading.current_thread())
            assert retry_running.wait(30)  # deaf to its timeout: no check_cancelled()
            helper = threading.Thread(target=report, args=(mp.get_current_task_id(),))
            helpers.append(helper)
            helper.start()
            return
        mp.report_progress(0.1, "the retry")
        retry_running.set()
        assert helper_reported.wait(30)
        task = current_task()
        assert task is not None
        seen_by_the_retry.append((task.get_progress(), task.get_progress_message()))

    with no_retry_waits():
        handle = asks_late()
        handle.get(timeout=30)
    helpers[1].join(30)
    assert seen_by_the_retry == [(0.1, "the retry")]
    assert handle.attempts == 2


@pytest.mark.timeout(60)
def test_the_coroutine_of_an_attempt_that_timed_out_and_was_retried_is_cancelled() -> None:
    # Only the last attempt's was, as the handle ended: with one worker thread, the first
    # attempt's coroutine held it to its end, and the retry waited behind it.
    resize(1)
    cancelled: list[int] = []
    attempts: list[int] = []

    @mp.parallel(timeout=0.05, retry=mp.Retry(on=(mp.TaskTimeoutError,), attempts=2))
    async def sleeps() -> None:
        attempts.append(1)
        attempt = len(attempts)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(attempt)
            raise

    with no_retry_waits():
        handle = sleeps()
        with pytest.raises(mp.TaskTimeoutError):
            handle.get(timeout=20)
    assert handle.status == "timed out" and handle.attempts == 2  # not the wait for it giving up
    assert wait_until(lambda: sorted(cancelled) == [1, 2], 10), cancelled


@pytest.mark.timeout(60)
def test_a_late_coroutine_on_the_callers_loop_leaves_its_retry_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # An executor that runs a call as it is submitted, from a coroutine: the first
    # attempt's coroutine runs on the caller's loop, and on past its timeout; its retry,
    # on the thread that sends it. The late coroutine's end marked the task's code as
    # returned, and settled the task with its outcome, as the retry ran.
    first_may_end = threading.Event()
    second_started = threading.Event()
    second_may_end = threading.Event()
    told = threading.Event()
    attempts: list[int] = []

    async def late_then_deaf() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            while not first_may_end.is_set():
                await asyncio.sleep(0.005)
            return "stale"
        second_started.set()
        assert second_may_end.wait(30)  # deaf to its cancellation: it blocks its loop
        return "fresh"

    finish_from_loop = AsyncHandle._finish_from_loop

    def told_once_finished(handle: AsyncHandle[Any], *args: Any) -> None:
        finish_from_loop(handle, *args)
        told.set()

    monkeypatch.setattr(AsyncHandle, "_finish_from_loop", told_once_finished)

    async def off_the_loop(event: threading.Event) -> bool:
        return await asyncio.get_running_loop().run_in_executor(None, event.wait, 30)

    async def main(fn: Callable[[], mp.AsyncHandle[str]]) -> None:
        handle = fn()
        assert await off_the_loop(second_started)
        first_may_end.set()
        assert await off_the_loop(told)  # the late coroutine ended, and its end was handled
        assert not handle.done()
        assert handle.cancel_with_timeout(0.05) is False
        second_may_end.set()
        assert handle.cancel_with_timeout(30) is True

    with mp.Executor("sync") as executor, no_retry_waits():
        try:
            retry = mp.Retry(on=mp.TaskTimeoutError, attempts=2)
            # The retry's timeout leaves it room to be seen running on a busy machine.
            asyncio.run(main(mp.parallel(backend=executor, timeout=2.0, retry=retry)(late_then_deaf)))
        finally:
            first_may_end.set()
            second_may_end.set()
    assert len(attempts) == 2


# -- an async task awaited on a running loop ----------------------------------------------
#
# On "sync" its coroutine runs on that loop, started as submit() returns: its attempt failed
# after the caller had gone on, and nothing ran another (it ended after its first attempt).


class AsyncFlaky:
    """An ``async def`` call that fails its first ``failures`` attempts, then returns the attempt number.

    ``hangs``: the first attempt awaits for good instead (its timeout ends it), and
    the next ones return only once its coroutine was cancelled (listed in ``cancelled``).
    """

    def __init__(self, failures: int, hangs: bool = False, error: type[Exception] = ConnectionError) -> None:
        self.failures = failures
        self.hangs = hangs
        self.error = error
        self.calls = 0
        self.cancelled: list[int] = []

    async def __call__(self) -> int:
        self.calls += 1
        attempt = self.calls
        if attempt == 1 and self.hangs:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(attempt)
                raise
        while self.hangs and not self.cancelled:  # (the first attempt's cancel may come from another thread)
            await asyncio.sleep(0.005)
        if attempt <= self.failures:
            raise self.error(f"attempt {attempt} failed")
        return attempt


async def awaited_where_waits_still_run(handle: mp.AsyncHandle[Any]) -> Any:
    """``await handle``, for a test that then looks at what happened, off the loop."""
    return await handle


async def off_the_loop(wait: Callable[[], object]) -> Any:
    """A blocking wait of the test's own, off the loop, which goes on meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(None, wait)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync"])
@pytest.mark.parametrize("first", ["raises", "raises, timed", "times out"])
def test_an_async_task_awaited_on_a_running_loop_is_retried(backend: str, first: str, events: list[mp.TaskEvent]) -> None:
    flaky = AsyncFlaky(1, hangs=first == "times out")
    name = f"async_awaited_{backend}_{first}"
    retry = mp.Retry(on=(ConnectionError, mp.TaskTimeoutError), attempts=3)
    fn = mp.parallel(backend=backend, name=name, timeout=None if first == "raises" else 1.0, retry=retry)(flaky)

    async def main() -> tuple[mp.AsyncHandle[int], int]:
        handle = fn()
        return handle, await handle

    mp.reset_metrics()
    with no_retry_waits():
        handle, result = asyncio.run(main())
    assert (result, handle.attempts, flaky.calls) == (2, 2, 2)
    assert flaky.cancelled == ([1] if flaky.hangs else [])  # as the timeout retried it, not as the task ended
    retries = [e for e in events if e.kind == "retry" and e.task_id == handle.get_task_id()]
    assert [(e.attempt, type(e.error), e.wait) for e in retries] == [
        (1, mp.TaskTimeoutError if flaky.hangs else ConnectionError, 0.0)
    ]
    metrics = mp.get_metrics(name)
    assert metrics is not None
    assert (metrics.retried_tasks, metrics.retries, metrics.completed_tasks, metrics.total_tasks) == (1, 1, 1, 1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_a_plain_function_returning_a_coroutine_is_retried_on_a_running_loop_from_its_first_call(backend: str) -> None:
    # Not known to be async before its first coroutine came back: on "sync", that call
    # started as a plain function's, whose retries its caller runs.
    flaky = AsyncFlaky(1)
    fn = mp.parallel(backend=backend, retry=mp.Retry(on=ConnectionError, attempts=3))(lambda: flaky())

    async def main() -> tuple[mp.AsyncHandle[int], int]:
        handle = fn()
        return handle, await handle

    with no_retry_waits():
        handle, result = asyncio.run(main())
    assert (result, handle.attempts, flaky.calls) == (2, 2, 2)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync"])
@pytest.mark.parametrize("first", ["raises before any coroutine", "refused by its open breaker"])
def test_a_plain_function_whose_first_coroutine_comes_from_a_retry_is_retried_on_a_running_loop(
    backend: str, first: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On "sync" its caller ran that retry inline, on the loop's thread, and its coroutine
    # started on the loop: only the first attempt's was looked for. That coroutine failed
    # after the caller had gone on, and the task ended ("cannot run it again from here").
    breaker = mp.CircuitBreaker(f"learned-on-a-retry-{backend}", min_calls=100)
    admit_retry = AsyncHandle._admit_retry

    def recovered(handle: AsyncHandle[Any]) -> bool:
        breaker.reset()  # (the one refusing the first attempt recovers during the wait)
        return admit_retry(handle)

    monkeypatch.setattr(AsyncHandle, "_admit_retry", recovered)
    flaky = AsyncFlaky(2 if first == "raises before any coroutine" else 1)
    calls: list[int] = []

    def coroutine_from_its_second_call() -> Any:
        calls.append(1)
        if len(calls) == 1 and first == "raises before any coroutine":
            flaky.calls += 1
            raise ConnectionError("attempt 1 failed")
        return flaky()

    retry = mp.Retry(on=(ConnectionError, mp.CircuitOpenError), attempts=4)
    fn = mp.parallel(backend=backend, circuit_breaker=breaker, retry=retry)(coroutine_from_its_second_call)

    async def main() -> tuple[mp.AsyncHandle[int], int]:
        if first != "raises before any coroutine":
            breaker.force_open()
        handle = fn()
        return handle, await handle

    with no_retry_waits():
        handle, result = asyncio.run(main())
    assert (result, handle.attempts) == ((3, 3) if first == "raises before any coroutine" else (2, 3))


@pytest.mark.timeout(60)
def test_a_plain_function_whose_first_coroutine_times_out_before_its_loop_is_noted_is_retried_on_that_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its timeout came on the deadline thread as its caller still ran it inline: that
    # retry's wait, left to the caller, must reach the heap as the loop takes its attempts.
    from makeparallel._backends import _sync

    flaky = AsyncFlaky(0, hangs=True)
    fn = mp.parallel(backend="sync", timeout=0.05, retry=mp.Retry(on=mp.TaskTimeoutError, attempts=3))(lambda: flaky())
    noted = _sync.waiting_on

    def once_timed_out(loop: Any) -> Any:
        handle = on_its_loop[0]
        assert wait_until(lambda: handle.status == "waiting to retry", 30)  # (the loop, blocked here, ran nothing)
        return noted(loop)

    on_its_loop: list[AsyncHandle[Any]] = []
    run = AsyncHandle._run

    def noting(handle: AsyncHandle[Any]) -> None:
        on_its_loop.append(handle)
        run(handle)

    monkeypatch.setattr(AsyncHandle, "_run", noting)
    monkeypatch.setattr(_sync, "waiting_on", once_timed_out)

    async def main() -> tuple[mp.AsyncHandle[int], int]:
        handle = fn()
        return handle, await handle

    with no_retry_waits():
        handle, result = asyncio.run(main())
    assert (result, handle.attempts, flaky.cancelled) == (2, 2, [1])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync"])
@pytest.mark.parametrize("timeout", [None, 30.0])
def test_an_async_task_awaited_on_a_running_loop_ends_with_its_last_error_and_a_note_of_every_attempt(
    backend: str, timeout: float | None
) -> None:
    flaky = AsyncFlaky(10)
    fn = mp.parallel(backend=backend, timeout=timeout, retry=mp.Retry(on=ConnectionError, attempts=3))(flaky)

    async def main() -> mp.AsyncHandle[int]:
        handle = fn()
        with pytest.raises(ConnectionError, match="attempt 3 failed") as caught:
            await handle
        note = "\n".join(caught.value.__notes__)
        assert "3 attempt(s) failed" in note and "not retried again" not in note
        for n in (1, 2, 3):
            assert f"attempt {n}: ConnectionError after" in note
        return handle

    with no_retry_waits():
        handle = asyncio.run(main())
    assert handle.attempts == 3 and flaky.calls == 3


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync"])
@pytest.mark.parametrize("timeout", [None, 30.0])
def test_an_async_task_awaited_on_a_running_loop_is_not_retried_for_an_error_outside_on(
    backend: str, timeout: float | None, events: list[mp.TaskEvent]
) -> None:
    flaky = AsyncFlaky(1, error=ValueError)
    fn = mp.parallel(backend=backend, timeout=timeout, retry=mp.Retry(on=ConnectionError, attempts=3))(flaky)

    async def main() -> mp.AsyncHandle[int]:
        handle = fn()
        with pytest.raises(ValueError, match="attempt 1 failed") as caught:
            await handle
        assert "attempt(s) failed" not in "\n".join(getattr(caught.value, "__notes__", []))
        return handle

    with no_retry_waits():
        handle = asyncio.run(main())
    assert handle.attempts == 1 and flaky.calls == 1
    assert [e for e in events if e.kind == "retry" and e.task_id == handle.get_task_id()] == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync"])
@pytest.mark.parametrize("first", ["raises", "refused by its open breaker"])
def test_the_retry_wait_of_an_async_task_awaited_on_a_running_loop_leaves_the_loop_running(
    backend: str, first: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The backoff ends only once another coroutine on the loop has made progress: a wait
    # spent on the loop's thread would never see it. On "sync", a call refused by its
    # breaker, to be retried, spent its wait there.
    breaker = mp.CircuitBreaker(f"loop-free-{backend}", min_calls=100)
    progressed = threading.Event()
    admitted_on: list[int] = []
    admit_retry = AsyncHandle._admit_retry

    def once_the_loop_progressed(handle: AsyncHandle[Any]) -> bool:
        admitted_on.append(threading.get_ident())
        assert progressed.wait(30), "the loop ran nothing during the retry wait"
        breaker.reset()  # (the one refusing the first attempt recovers during the wait)
        return admit_retry(handle)

    monkeypatch.setattr(AsyncHandle, "_admit_retry", once_the_loop_progressed)
    flaky = AsyncFlaky(1 if first == "raises" else 0)
    retry = mp.Retry(on=(ConnectionError, mp.CircuitOpenError), attempts=2)
    fn = mp.parallel(backend=backend, circuit_breaker=breaker, retry=retry)(flaky)

    async def another() -> None:
        await asyncio.sleep(0)
        progressed.set()

    async def main() -> tuple[mp.AsyncHandle[int], int]:
        if first != "raises":
            breaker.force_open()
        handle = fn()
        other = asyncio.ensure_future(another())
        result = await handle
        await other
        return handle, result

    with no_retry_waits():
        handle, result = asyncio.run(main())
    loop_thread = threading.get_ident()  # asyncio.run ran the loop here
    assert admitted_on and loop_thread not in admitted_on
    assert (result, handle.attempts) == ((2, 2) if first == "raises" else (1, 2))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync"])
@pytest.mark.parametrize("how", ["the await cancelled", "handle.cancel()"])
def test_an_async_task_cancelled_as_it_waits_to_retry_on_a_running_loop_makes_no_other_attempt(
    backend: str, how: str, monkeypatch: pytest.MonkeyPatch, events: list[mp.TaskEvent]
) -> None:
    may_resume = threading.Event()
    resumed = threading.Event()
    retry_due = AsyncHandle._retry_due

    def once_told(handle: AsyncHandle[Any]) -> None:
        try:
            assert may_resume.wait(30)
            retry_due(handle)
        finally:
            resumed.set()

    monkeypatch.setattr(AsyncHandle, "_retry_due", once_told)
    flaky = AsyncFlaky(1)
    fn = mp.parallel(backend=backend, retry=mp.Retry(on=ConnectionError, attempts=3))(flaky)

    def waiting_to_retry(handle: mp.AsyncHandle[Any]) -> Callable[[], bool]:
        return lambda: any(e.kind == "retry" and e.task_id == handle.get_task_id() for e in events)

    async def main() -> mp.AsyncHandle[int]:
        handle = fn()
        awaiting = asyncio.ensure_future(awaited_where_waits_still_run(handle))
        assert await off_the_loop(lambda: wait_until(waiting_to_retry(handle), 30))
        assert handle.status == "waiting to retry"
        if how == "the await cancelled":
            awaiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await awaiting
        else:
            assert handle.cancel() is True
            with pytest.raises(mp.TaskCancelledError):
                await awaiting
        may_resume.set()
        assert await off_the_loop(lambda: resumed.wait(30))
        for _ in range(5):  # an attempt it had scheduled on this loop runs meanwhile
            await asyncio.sleep(0)
        return handle

    with no_retry_waits():
        handle = asyncio.run(main())
    assert handle.cancelled() and handle.attempts == 1 and flaky.calls == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_each_attempt_of_an_async_task_awaited_on_a_running_loop_is_one_call_for_its_breaker(backend: str) -> None:
    breaker = mp.CircuitBreaker(f"async-attempts-{backend}", min_calls=100)
    flaky = AsyncFlaky(2)
    fn = mp.parallel(backend=backend, circuit_breaker=breaker, retry=mp.Retry(on=ConnectionError, attempts=3))(flaky)

    async def main() -> int:
        return await fn()

    with no_retry_waits():
        assert asyncio.run(main()) == 3
    stats = breaker.statistics()
    assert (stats.failed_calls, stats.successful_calls, stats.not_permitted_calls) == (2, 1, 0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_shutdown_ends_an_async_task_waiting_to_retry_on_a_running_loop_at_once(
    backend: str, events: list[mp.TaskEvent]
) -> None:
    flaky = AsyncFlaky(10)
    retry = mp.Retry(on=ConnectionError, attempts=3, timeout=None, wait_initial=600, wait_max=600, wait_jitter=0)
    fn = mp.parallel(backend=backend, retry=retry)(flaky)

    async def main() -> mp.AsyncHandle[int]:
        handle = fn()
        awaiting = asyncio.ensure_future(awaited_where_waits_still_run(handle))
        assert await off_the_loop(lambda: wait_until(lambda: any(e.kind == "retry" for e in events), 30))
        assert mp.shutdown(timeout_secs=30) is True  # (on the loop's thread: it runs nothing while this waits)
        with pytest.raises(ConnectionError, match="attempt 1 failed") as caught:
            await awaiting
        assert "not retried again: makeparallel was shut down" in "\n".join(caught.value.__notes__)
        return handle

    try:
        handle = asyncio.run(main())
    finally:
        mp.reset_shutdown()
    assert handle.attempts == 1 and flaky.calls == 1


@pytest.mark.timeout(60)
def test_a_sync_async_task_whose_loop_closed_as_it_waited_to_retry_ends_with_its_last_error(
    monkeypatch: pytest.MonkeyPatch, events: list[mp.TaskEvent]
) -> None:
    # Only its caller's loop can run its coroutine: nothing can, once that loop closed.
    may_resume = threading.Event()
    retry_due = AsyncHandle._retry_due

    def once_told(handle: AsyncHandle[Any]) -> None:
        assert may_resume.wait(30)
        retry_due(handle)

    monkeypatch.setattr(AsyncHandle, "_retry_due", once_told)
    flaky = AsyncFlaky(1)
    fn = mp.parallel(backend="sync", retry=mp.Retry(on=ConnectionError, attempts=3))(flaky)

    async def main() -> mp.AsyncHandle[int]:
        handle = fn()
        while not any(e.kind == "retry" and e.task_id == handle.get_task_id() for e in events):
            await asyncio.sleep(0)  # its first attempt runs on this loop, and fails
        return handle

    with no_retry_waits():
        handle = asyncio.run(main())  # not awaited: the loop closes as it waits to retry
        may_resume.set()
        with pytest.raises(ConnectionError, match="attempt 1 failed") as caught:
            handle.get(timeout=30)
    assert handle.attempts == 1 and flaky.calls == 1
    assert "not retried again: the event loop it was called from, which alone runs its coroutine, closed" in "\n".join(
        caught.value.__notes__
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_cancel_with_timeout_waits_for_the_coroutine_of_a_retry_awaited_on_a_running_loop(backend: str) -> None:
    # On "sync" the retry started on the loop as the first attempt had left the task's
    # code marked as returned: cancel_with_timeout() said at once that it had stopped,
    # as the retry's coroutine still ran.
    second_started = threading.Event()
    may_end = threading.Event()
    calls: list[int] = []

    async def flaky_then_slow_to_stop() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("attempt 1 failed")
        second_started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            while not may_end.is_set():  # its cleanup, which the cancel waits for
                await asyncio.sleep(0.005)
            raise

    fn = mp.parallel(backend=backend, retry=mp.Retry(on=ConnectionError, attempts=2))(flaky_then_slow_to_stop)

    async def main() -> None:
        handle = fn()
        assert await off_the_loop(lambda: second_started.wait(30))
        try:
            assert await off_the_loop(lambda: handle.cancel_with_timeout(0.05)) is False
        finally:
            may_end.set()
        assert await off_the_loop(lambda: handle.cancel_with_timeout(30)) is True

    with no_retry_waits():
        asyncio.run(main())
    assert len(calls) == 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_cancel_with_timeout_from_another_thread_waits_for_the_code_of_a_retry(backend: str) -> None:
    # On "sync" the caller runs the retry inline, and the first attempt had left the task's
    # code marked as returned: cancel_with_timeout() said at once that it had stopped.
    second_started = threading.Event()
    may_end = threading.Event()
    calls: list[int] = []
    said: list[bool] = []

    def cancel_it(handle: mp.AsyncHandle[Any]) -> None:
        try:
            assert second_started.wait(30)
            said.append(handle.cancel_with_timeout(0.05))
        finally:
            may_end.set()
        said.append(handle.cancel_with_timeout(30))

    def flaky_then_deaf() -> None:
        calls.append(1)
        if len(calls) == 1:
            handle = current_task()
            assert handle is not None
            threading.Thread(target=cancel_it, args=(handle,), daemon=True).start()
            raise ConnectionError("attempt 1 failed")
        second_started.set()
        assert may_end.wait(30)  # deaf to its cancellation: no check_cancelled()

    fn = mp.parallel(backend=backend, retry=mp.Retry(on=ConnectionError, attempts=2))(flaky_then_deaf)
    with no_retry_waits():
        handle = fn()
        assert wait_until(lambda: len(said) == 2, 30)
    assert said == [False, True] and handle.cancelled() and len(calls) == 2


def test_a_timed_out_attempt_is_not_retried_through_a_base_class(gate: threading.Event) -> None:
    @mp.parallel(timeout=0.05, retry=mp.Retry(on=TimeoutError, attempts=3))
    def stuck() -> None:
        gate.wait(30)

    handle = stuck()
    with pytest.raises(mp.TaskTimeoutError) as caught:
        handle.get(timeout=30)
    assert handle.attempts == 1
    assert not getattr(caught.value, "__notes__", [])  # a single attempt: nothing to list
    gate.set()


# -- the 0.2 decorators --------------------------------------------------------------------


def test_retry_alone_retries_in_the_caller() -> None:
    flaky = Flaky(2, ValueError)
    fn = mp.retry(max_retries=2)(flaky)
    assert fn() == 3
    flaky = Flaky(5, ValueError)
    with pytest.raises(ValueError, match="attempt 3 failed") as caught:
        mp.retry(max_retries=2)(flaky)()
    assert "3 attempt(s) failed" in "\n".join(caught.value.__notes__)


def test_retry_backoff_alone_waits_in_the_caller() -> None:
    flaky = Flaky(2)
    fn = mp.retry_backoff(max_attempts=3, backoff="constant", initial_delay=0.001)(flaky)
    assert fn() == 3


@pytest.mark.parametrize("legacy", ["retry", "retry_backoff"])
def test_a_retry_decorator_alone_retries_an_async_function_in_the_callers_coroutine(legacy: str) -> None:
    # The call gave the coroutine back at once, and its error came when it was awaited,
    # past every retry: one attempt, no note, no warning.
    flaky = Flaky(2)

    async def fetch(x: int) -> int:
        return flaky() * x

    decorate = mp.retry(max_retries=2) if legacy == "retry" else mp.retry_backoff(max_attempts=3, initial_delay=0.001)
    fn = decorate(fetch)
    assert inspect.iscoroutinefunction(fn)  # what frameworks ask before they await a call
    assert asyncio.run(fn(10)) == 30
    failing = Flaky(5)

    async def down() -> int:
        return failing()

    with pytest.raises(ConnectionError, match="attempt 3 failed") as caught:
        asyncio.run(decorate(down)())
    assert "3 attempt(s) failed" in "\n".join(caught.value.__notes__)


def test_a_retry_decorator_never_retries_the_cancellation_of_its_async_caller() -> None:
    started = []

    @mp.retry(max_retries=5)
    async def waits() -> None:
        started.append(1)
        await asyncio.sleep(30)

    async def main() -> None:
        task = asyncio.ensure_future(waits())
        while not started:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert started == [1]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stop", ["cancel", "timeout"])
@pytest.mark.parametrize("legacy", ["retry_backoff", "retry_backoff over retry_backoff"])
def test_a_retry_decorator_inside_a_task_stops_waiting_and_retrying_once_the_task_is_stopped(
    stop: str, legacy: str
) -> None:
    # A task calling a helper under a retry decorator (as the README advises for a map's
    # items): the helper's wait between attempts slept on past the task's cancel or
    # timeout, then ran another attempt for a caller who had given up (a second call to the
    # service), and shutdown() and exit waited for the sleeps.
    calls: list[int] = []
    failed_once = threading.Event()
    ended: list[BaseException] = []
    code_done = threading.Event()

    def call_service() -> None:
        calls.append(1)
        failed_once.set()
        raise ConnectionError("busy")

    decorate = mp.retry_backoff(max_attempts=3, initial_delay=60.0)
    helper = decorate(call_service) if legacy == "retry_backoff" else decorate(decorate(call_service))

    @mp.parallel(timeout=0.05 if stop == "timeout" else None)
    def job() -> None:
        try:
            helper()
        except BaseException as error:
            ended.append(error)
            raise
        finally:
            code_done.set()

    handle = job()
    assert failed_once.wait(10)
    if stop == "cancel":
        assert handle.cancel()
    else:
        assert isinstance(handle.exception(timeout=10), mp.TaskTimeoutError)
    assert code_done.wait(10), "the retry decorator slept on in a task that was stopped"
    assert calls == [1]  # no attempt after the stop
    assert isinstance(ended[0], mp.TaskCancelledError if stop == "cancel" else mp.TaskTimeoutError)
    assert isinstance(ended[0].__context__, ConnectionError)  # the error it was waiting to retry


@pytest.mark.parametrize("order", ["retry_outside", "retry_inside"])
@pytest.mark.parametrize("legacy", ["retry", "retry_backoff"])
def test_stacked_with_parallel_in_either_order_the_retry_becomes_the_tasks_policy(order: str, legacy: str) -> None:
    calls: list[int] = []

    def work() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise OSError("not yet")
        return len(calls)

    decorator = mp.retry(max_retries=4) if legacy == "retry" else mp.retry_backoff(max_attempts=5, initial_delay=0.0)
    fn = decorator(mp.parallel(work)) if order == "retry_outside" else mp.parallel(decorator(work))
    assert isinstance(fn, mp.ParallelFunction)
    with no_retry_waits():
        handle = fn()
        assert handle.get(timeout=30) == 3
    assert handle.attempts == 3  # the handle retried: not a retry inside a retry


class Metered:
    """An ``async def`` method under a retry decorator, failing its first call."""

    def __init__(self, scale: int) -> None:
        self.scale = scale
        self.flaky = Flaky(1)

    @mp.retry(max_retries=2)
    async def read(self, x: int) -> int:
        return self.scale * x * self.flaky()

    @classmethod
    @mp.retry_backoff(max_attempts=3, initial_delay=0.0)
    async def named(cls, times: int) -> str:
        return cls.__name__ * times


@pytest.mark.timeout(20)
def test_an_async_method_under_a_retry_decorator_made_parallel_keeps_its_instance() -> None:
    # Read on its instance (or class), such a method is a bound method of the retrying function:
    # made parallel, by @parallel or a group's submit, it took the function the decorator wraps,
    # with no instance, and each attempt lacked the method's first argument.
    metered = Metered(3)
    with no_retry_waits():
        handle = mp.parallel(metered.read)(2)
        assert handle.get(timeout=10) == 12  # 3 * 2 * the second attempt
        assert handle.attempts == 2  # the retry is the task's policy still
        assert mp.parallel(Metered.named)(2).get(timeout=10) == "MeteredMetered"
        with mp.ParallelContext() as ctx:
            ctx.submit(Metered(5).read, 1)
        assert ctx.results() == [10]


def test_bare_retry_decorator() -> None:
    flaky = Flaky(3, ValueError)
    assert mp.retry(flaky)() == 4


@mp.retry(max_retries=1)
def retried_by_name(x: int) -> int:
    return x * 10


class RetriedMethods:
    @mp.retry_backoff(max_attempts=2, initial_delay=0.0)
    def scaled(self, x: int) -> int:
        return x * 100


@pytest.mark.timeout(60)
def test_a_retry_decorated_function_pickles_by_its_name_as_a_plain_function_does() -> None:
    # pickle sends a function by its name: the name gave the decorator, not the function it
    # wraps, and pickle refused it ("not the same object as ..."), so a multiprocessing Pool or a
    # ProcessPoolExecutor could not run it (tenacity#147). The decorator itself goes by name.
    for fn in (retried_by_name, RetriedMethods.scaled):
        assert pickle.loads(pickle.dumps(fn)) is fn
    bound = pickle.loads(pickle.dumps(RetriedMethods().scaled))
    assert bound(2) == 200
    assert copy.deepcopy(retried_by_name) is retried_by_name
    with ProcessPoolExecutor(1) as pool:
        assert pool.submit(retried_by_name, 4).result(timeout=30) == 40


class RetriedClassMethods:
    @classmethod
    @mp.retry(max_retries=1)
    def named(cls, x: int) -> str:
        return f"{cls.__name__} {x}"

    @mp.retry(max_retries=1)
    @classmethod
    def named_too(cls, x: int) -> str:
        return f"{cls.__name__} {x}"


@pytest.mark.timeout(60)
def test_a_retry_decorated_class_method_pickles_bound_to_its_class() -> None:
    # Up to Python 3.12 a class method binds the retrying function as a partial of it and the
    # class: its name gave that partial, not the retrying function, which then went as what it
    # wraps, by the same name, and pickle refused it ("not the same object as ...").
    for method in (RetriedClassMethods.named, RetriedClassMethods.named_too):
        assert pickle.loads(pickle.dumps(method))(3) == "RetriedClassMethods 3"
    with ProcessPoolExecutor(1) as pool:
        assert pool.submit(RetriedClassMethods.named, 4).result(timeout=30) == "RetriedClassMethods 4"


MAIN_SCRIPT_POOLS = """
import multiprocessing, sys
from concurrent.futures import ProcessPoolExecutor
import makeparallel as mp

@mp.retry(max_retries=1)
def doubled(x):
    return x * 2

class Steps:
    @mp.retry_backoff(max_attempts=2, initial_delay=0.0)
    def plus_one(self, x):
        return x + 1

if __name__ == "__main__":
    context = multiprocessing.get_context(sys.argv[1])
    with context.Pool(1) as pool:
        print(pool.map(doubled, [1, 2]), pool.map(Steps().plus_one, [1, 2]))
    with ProcessPoolExecutor(1, mp_context=context) as executor:
        print(list(executor.map(doubled, [3])))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_retry_decorated_function_of_the_main_script_runs_in_a_multiprocessing_pool(
    start_method: str, tmp_path: Path
) -> None:
    # tenacity#147's own example: a script's retried function, mapped by a multiprocessing Pool.
    # One of the main script went as what it wraps, by value for cloudpickle (Dask, joblib),
    # whose workers do not run the script; multiprocessing's pickler sent that function by its
    # name, which gave the decorator, and refused it ("not the same object as __main__.doubled").
    if start_method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {start_method} start method here")
    script = tmp_path / "pool_script.py"
    script.write_text(MAIN_SCRIPT_POOLS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKEPARALLEL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(mp.__file__).parents[1]), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, str(script), start_method], capture_output=True, text=True, env=env, timeout=100, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[2, 4] [2, 3]", "[6]"]


def test_a_retry_decorated_function_of_no_name_pickles_with_what_it_wraps() -> None:
    # Not found by its name (made in a function): it travels as what it wraps and its policy,
    # as a parallel function does; pickle refuses the local function, naming it.
    def local(x: int) -> int:
        return x

    with pytest.raises((pickle.PicklingError, AttributeError), match="local"):
        pickle.dumps(mp.retry(local))


@pytest.mark.timeout(20)
def test_bare_retry_backoff_decorator_takes_the_defaults() -> None:
    parallel = mp.retry_backoff(mp.parallel(Flaky(2, ValueError)))
    assert isinstance(parallel, mp.ParallelFunction)
    with no_retry_waits():
        assert mp.retry_backoff(Flaky(2, ValueError))() == 3  # 3 attempts by default
        assert parallel().get(timeout=10) == 3
    with pytest.raises(TypeError, match=r"takes its options as keywords: @retry_backoff\(max_attempts=5\)"):
        mp.retry_backoff(5)  # type: ignore[call-overload]  # the options are keyword-only, as in 0.2


def stream_that_breaks() -> Iterator[int]:
    yield 1
    raise ConnectionError("mid-stream")


async def async_stream_that_breaks() -> Any:
    yield 1
    raise ConnectionError("mid-stream")


class StreamMaker:
    """A callable object whose call makes a generator (judged through its ``__call__``)."""

    def __call__(self) -> Iterator[int]:
        yield 1


@pytest.mark.parametrize("legacy", ["retry", "retry_backoff"])
@pytest.mark.parametrize(
    ("fn", "kind"),
    [
        (stream_that_breaks, "a generator"),
        (async_stream_that_breaks, "an async generator"),
        (functools.partial(stream_that_breaks), "a generator"),
        (StreamMaker(), "a generator"),
        (staticmethod(stream_that_breaks), "a generator"),
    ],
)
def test_legacy_decorators_refuse_a_generator_function(legacy: str, fn: Any, kind: str) -> None:
    # A call only creates the generator, which cannot fail: the error came later, as the
    # caller iterated it, past the decorator, and was never retried.
    decorate = mp.retry(max_retries=2) if legacy == "retry" else mp.retry_backoff(max_attempts=3)
    with pytest.raises(TypeError, match=f"cannot retry .* it is {kind} function .*return a list"):
        decorate(fn)


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (lambda: mp.retry(max_retries=-1), ValueError, "max_retries"),
        (lambda: mp.retry(max_retries="3"), TypeError, "max_retries"),
        (lambda: mp.retry_backoff(max_attempts=0), ValueError, "max_attempts"),
        (lambda: mp.retry_backoff(backoff="fibonacci"), ValueError, "backoff must be one of"),
        (lambda: mp.retry_backoff(initial_delay=-1), ValueError, "initial_delay"),
        (lambda: mp.retry_backoff(max_delay="x"), TypeError, "max_delay"),
        # Past max_delay, a delay is cut to it (0.2's cap) only where both are valid: cut first,
        # an infinite one was taken, and a bad max_delay was blamed on initial_delay.
        (lambda: mp.retry_backoff(initial_delay=math.inf, max_delay=10), ValueError, r"^initial_delay .*, got inf$"),
        (lambda: mp.retry_backoff(initial_delay=5, max_delay=-1), ValueError, r"^max_delay .*, got -1$"),
        (lambda: mp.retry_backoff(initial_delay=-1, max_delay=-2), ValueError, r"^initial_delay .*, got -1$"),
    ],
)
def test_legacy_decorators_check_their_arguments(call: Any, error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        call()


@pytest.mark.parametrize(
    ("backoff", "waits"),
    [("exponential", [1.0, 2.0, 4.0, 5.0]), ("linear", [1.0, 2.0, 3.0, 4.0]), ("constant", [1.0, 1.0, 1.0, 1.0])],
)
def test_legacy_backoff_shapes(backoff: str, waits: list[float]) -> None:
    fn = mp.retry_backoff(max_attempts=5, backoff=backoff, initial_delay=1.0, max_delay=5.0)(lambda: None)
    policy = fn.__makeparallel_retry__  # type: ignore[attr-defined]
    assert [policy.wait(n) for n in range(1, 5)] == waits


def slow_first_attempt(path: str) -> str:
    """Sleeps past its timeout on the first attempt (counted in a file), returns at once later."""
    import time

    calls = count_call(path)
    if calls == 1:
        time.sleep(60)  # killed with its worker at the timeout
    return f"attempt {calls}"


@pytest.mark.timeout(150)
def test_a_timed_out_process_attempt_is_killed_and_retried(tmp_path: Any) -> None:
    # 15 s: the second attempt's fresh worker imports this test module within its time; beside
    # other test processes on 2 busy cores that took over 5 s.
    fn = mp.parallel(backend="process", timeout=15, retry=mp.Retry(on=(mp.TaskTimeoutError,), attempts=2))(
        slow_first_attempt
    )
    with no_retry_waits():
        handle = fn(str(tmp_path / "calls"))
        assert handle.get(timeout=60) == "attempt 2"
    assert handle.attempts == 2
    # The killed worker is replaced and the pool keeps working.
    assert mp.parallel(backend="process")(slow_first_attempt)(str(tmp_path / "calls")).get(timeout=60) == "attempt 3"


def test_retries_reach_prometheus() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from makeparallel.prometheus import register

    flaky = Flaky(1)
    fn = mp.parallel(name="prom_flaky", retry=mp.Retry(on=ConnectionError, attempts=2))(flaky)
    mp.reset_metrics()
    with no_retry_waits():
        fn().get(timeout=30)
    registry = CollectorRegistry()
    register(registry)
    page = generate_latest(registry).decode()
    assert 'makeparallel_tasks_retried_total{function="prom_flaky"} 1.0' in page
    assert 'makeparallel_task_retries_total{function="prom_flaky"} 1.0' in page


class SteppedClock:
    """A ``perf_counter`` for the handles that moves only when told, long before the real one."""

    def __init__(self) -> None:
        self.now = time.perf_counter() - 10_000.0  # every retry it schedules is already due

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_a_retried_tasks_queue_wait_is_its_last_attempts_not_its_backoff_or_earlier_runs(
    backend: str, monkeypatch: pytest.MonkeyPatch, events: list[mp.TaskEvent]
) -> None:
    """The first attempt runs 50 s and the backoff takes 30 s; the second starts the moment it is due."""
    from makeparallel import _handle

    clock = SteppedClock()
    monkeypatch.setattr(_handle, "_now", clock)
    admit_retry = AsyncHandle._admit_retry

    def due_now(handle: AsyncHandle[Any]) -> bool:
        clock.now = handle._retry.due  # the backoff is over, as the real clock would say
        return admit_retry(handle)

    monkeypatch.setattr(AsyncHandle, "_admit_retry", due_now)
    runs: list[int] = []

    policy = mp.Retry(on=ConnectionError, attempts=2, timeout=None, wait_initial=30.0, wait_max=30.0, wait_jitter=0)

    @mp.parallel(backend=backend, name="queue_wait_after_retry", retry=policy)
    def slow_then_ok() -> str:
        runs.append(1)
        if len(runs) == 1:
            clock.now += 50.0  # the first attempt runs 50 s, then fails
            raise ConnectionError("down")
        return "ok"

    mp.reset_metrics()
    handle = slow_then_ok()
    assert mp.wait([handle], timeout=30).not_done == set()  # (get(timeout) reads the clock that jumps)
    assert handle.result() == "ok" and handle.attempts == 2
    metrics = mp.get_metrics("queue_wait_after_retry")
    assert metrics is not None
    assert metrics.max_queue_wait_ms == 0.0  # not 80,000: the backoff and the first run are no queueing
    told = [(e.kind, e.queue_wait) for e in events if e.task_id == handle.get_task_id() and e.kind in ("started", "finished")]
    assert told == [("started", 0.0), ("started", 0.0), ("finished", 0.0)]


def test_shutdown_ends_waiting_retries_with_their_last_error_at_once() -> None:
    waiting = threading.Event()

    def note(event: mp.TaskEvent) -> None:
        if event.kind == "retry":
            waiting.set()

    @mp.parallel(retry=mp.Retry(on=ConnectionError, attempts=3, timeout=None, wait_initial=600, wait_max=600, wait_jitter=0))
    def down() -> None:
        raise ConnectionError("still down")

    mp.add_task_listener(note)
    try:
        handle = down()
        assert waiting.wait(30)
        assert mp.shutdown(timeout_secs=30) is True  # nothing left waiting 600 s
    finally:
        mp.remove_task_listener(note)
        mp.reset_shutdown()
    with pytest.raises(ConnectionError, match="still down") as caught:
        handle.get()
    notes = "\n".join(caught.value.__notes__)
    assert handle.attempts == 1 and "1 attempt(s) failed" in notes
    assert "not retried again: makeparallel was shut down" in notes


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process"])
@pytest.mark.parametrize("stop", ["cancel", "shutdown"])
def test_a_retry_stopped_during_its_wait_never_ran_and_is_not_counted(
    backend: str, stop: str, events: list[mp.TaskEvent]
) -> None:
    # The retry was counted as it was scheduled: a task cancelled, or shut down, as it
    # waited made one attempt, and the metrics said it had been retried once.
    waiting = threading.Event()

    def note(event: mp.TaskEvent) -> None:
        if event.kind == "retry" and event.name == "stopped_in_its_wait":
            waiting.set()

    policy = mp.Retry(on=ConnectionError, attempts=3, timeout=None, wait_initial=600, wait_max=600, wait_jitter=0)

    @mp.parallel(name="stopped_in_its_wait", backend=backend, retry=policy)
    def down() -> None:
        raise ConnectionError("still down")

    mp.reset_metrics()
    mp.add_task_listener(note)
    try:
        handle = down()
        assert waiting.wait(30)
        if stop == "cancel":
            assert handle.cancel()
        else:
            assert mp.shutdown(timeout_secs=30) is True
    finally:
        mp.remove_task_listener(note)
        if stop == "shutdown":
            mp.reset_shutdown()
    assert handle.wait(30)
    assert handle.attempts == 1
    metrics = mp.get_metrics("stopped_in_its_wait")
    assert metrics is not None
    assert (metrics.retried_tasks, metrics.retries, metrics.total_tasks) == (0, 0, 1)
    # The events say what happened: a retry scheduled ("retry"), then the end, no attempt between.
    told = [e.kind for e in events if e.task_id == handle.get_task_id()]
    assert told == ["submitted", "started", "retry", "finished"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_retry_is_counted_once_its_attempt_ran(backend: str, tmp_path: Path) -> None:
    # Counted when that attempt ends: as it fails again (before the task ends), or as the task ends.
    policy = mp.Retry(on=ConnectionError, attempts=3, wait_initial=0, wait_max=0, wait_jitter=0)
    fn = mp.parallel(name="counted_as_it_ran", backend=backend, retry=policy)(flaky_in_process)
    mp.reset_metrics()
    assert fn(str(tmp_path / "calls"), 2).get(timeout=30) == 3
    metrics = mp.get_metrics("counted_as_it_ran")
    assert metrics is not None
    assert (metrics.retried_tasks, metrics.retries, metrics.completed_tasks) == (1, 2, 1)
    with pytest.raises(ConnectionError):
        fn(str(tmp_path / "more_calls"), 5).get(timeout=30)
    metrics = mp.get_metrics("counted_as_it_ran")
    assert metrics is not None
    assert (metrics.retried_tasks, metrics.retries, metrics.failed_tasks) == (2, 4, 1)


@pytest.mark.timeout(60)
def test_shutdown_ends_a_sync_call_waiting_to_retry_in_its_caller_at_once() -> None:
    # The caller slept out its whole wait (shutdown() waiting with it), then
    # ran one more attempt after the shutdown.
    waiting = threading.Event()
    runs: list[int] = []

    def note(event: mp.TaskEvent) -> None:
        if event.kind == "retry":
            waiting.set()

    @mp.parallel(backend="sync", retry=mp.Retry(on=ConnectionError, attempts=3, timeout=None, wait_initial=600, wait_max=600, wait_jitter=0))
    def down() -> None:
        runs.append(1)
        raise ConnectionError("still down")

    stopped: list[bool] = []

    def stop() -> None:
        if waiting.wait(30):
            stopped.append(mp.shutdown(timeout_secs=30))

    stopping = threading.Thread(target=stop)
    mp.add_task_listener(note)
    try:
        stopping.start()
        handle = down()  # returns once the shutdown ended it, not 600 s later
        stopping.join(30)
    finally:
        mp.remove_task_listener(note)
        mp.reset_shutdown()
    assert stopped == [True] and runs == [1]
    with pytest.raises(ConnectionError, match="still down") as caught:
        handle.get()
    assert "not retried again: makeparallel was shut down" in "\n".join(caught.value.__notes__)


#: The executors that ``shut_down_then_fail`` shuts down, by the name the test gives it.
TO_SHUT_DOWN: dict[str, Executor] = {}


def shut_down_then_fail(key: str) -> None:
    TO_SHUT_DOWN[key].shutdown(wait=False)  # by its owner, as the task's retry waits
    raise ConnectionError("the first attempt's own error")


@pytest.mark.parametrize("kind", ["ThreadPoolExecutor", "executor elsewhere"])
def test_an_executor_shut_down_during_the_retry_wait_ends_the_task_with_its_last_error(kind: str) -> None:
    # Its next attempt was refused, and the task failed with ShutdownError alone:
    # the error the task itself raised was lost.
    with executor_named(kind) as executor:
        TO_SHUT_DOWN[kind] = executor
        try:
            fn = mp.parallel(backend=executor, retry=mp.Retry(on=ConnectionError, attempts=3))(shut_down_then_fail)
            with no_retry_waits():
                handle = fn(kind)
                with pytest.raises(ConnectionError, match="the first attempt's own error") as caught:
                    handle.get(timeout=30)
        finally:
            del TO_SHUT_DOWN[kind]
    notes = "\n".join(caught.value.__notes__)
    assert handle.attempts == 1 and "1 attempt(s) failed: attempt 1: ConnectionError" in notes
    assert "not retried again: ShutdownError: task" in notes and "is shut down or closed" in notes


class NotAnException(BaseException):
    """What a test framework's failure is (``pytest.fail``): not an ``Exception``."""


def predicate_that_raises(error: BaseException) -> bool:
    raise RuntimeError("the predicate's own bug")


def predicate_that_raises_a_base_exception(error: BaseException) -> bool:
    raise NotAnException("the predicate's own bug")


def raises_connection_error() -> None:
    raise ConnectionError("down")


def pool_threads_died(backend: str) -> int:
    """Threads of the pool that died of an error (the process pool's loop thread, a thread pool's workers)."""
    if backend == "process":
        return int(mp.get_process_pool_info()["loop_deaths"])
    return int(mp.get_thread_pool_info()["dead_threads"])


async def _async_predicate(error: BaseException) -> bool:
    return False


def _yielding_predicate(error: BaseException) -> Any:
    yield error


@pytest.mark.parametrize("policy", ["retry", "breaker"])
@pytest.mark.parametrize(
    ("on", "pattern"),
    [
        pytest.param(_async_predicate, r"^on=_async_predicate is an async function: .* always true\. Pass a plain", id="async"),
        pytest.param(_yielding_predicate, r"^on=_yielding_predicate is a generator function: .* always true", id="generator"),
        pytest.param(lambda: True, r"^on must take 1 positional argument \(exc\).* too many positional arguments", id="none"),
        pytest.param(lambda exc, why: True, r"^on must take 1 positional argument \(exc\).* missing a required", id="two"),
    ],
)
def test_a_predicate_that_cannot_answer_is_refused_as_the_policy_is_made(policy: str, on: Any, pattern: str) -> None:
    # Asked with each error: an async predicate's coroutine was always true, so every error was
    # retried (and "never awaited" warned); one that could not take the error failed at each.
    with pytest.raises(TypeError, match=pattern):
        if policy == "retry":
            mp.Retry(on=on)
        else:
            mp.CircuitBreaker("dependency", on=on)


@pytest.mark.parametrize(
    "on",
    [
        pytest.param(lambda exc: True, id="function"),
        pytest.param(lambda exc, *more: True, id="varargs"),
        pytest.param(functools.partial(lambda kind, exc: isinstance(exc, kind), ValueError), id="partial"),
        pytest.param(callable, id="builtin"),
    ],
)
def test_a_predicate_that_takes_the_error_is_taken(on: Any) -> None:
    assert mp.Retry(on=on).on is on
    assert mp.CircuitBreaker("dependency", on=on).on is on


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process", "sync"])
@pytest.mark.parametrize("predicate", [predicate_that_raises, predicate_that_raises_a_base_exception])
def test_a_predicate_that_raises_leaves_the_error_not_retried_and_kills_no_thread(
    backend: str, predicate: Callable[[BaseException], bool]
) -> None:
    # Asked as the attempt ended, on a worker thread or on the process pool's loop thread,
    # the predicate's error killed that thread: the task read running for good.
    died = pool_threads_died(backend)
    fn = mp.parallel(backend=backend, retry=mp.Retry(on=predicate, attempts=3, wait_initial=0))(raises_connection_error)
    handle = fn()
    with pytest.raises(ConnectionError, match="down") as caught:
        handle.get(timeout=30)
    assert handle.attempts == 1
    kind = "RuntimeError" if predicate is predicate_that_raises else "NotAnException"
    assert (
        f"makeparallel: not retried: the retry policy's on= predicate raised {kind}: the predicate's own bug "
        f"(in {predicate.__name__}, " in "\n".join(getattr(caught.value, "__notes__", []))
    )
    assert mp.parallel(backend=backend)(abs)(-3).get(timeout=30) == 3
    assert pool_threads_died(backend) == died


class CountingPredicate:
    """An ``on=`` predicate that counts its calls and answers ``answer``, or raises where ``answer`` is None."""

    def __init__(self, answer: bool | None) -> None:
        self.answer = answer
        self.calls = 0

    def __call__(self, error: BaseException) -> bool:
        self.calls += 1
        if self.answer is None:
            raise RuntimeError("the predicate's own bug")
        return self.answer


def run_where(where: str, fn: mp.ParallelFunction[[], None]) -> mp.AsyncHandle[None]:
    """Call ``fn`` once, until it ends: on the sync backend, or run inline by a caller waiting for it."""
    if where == "sync":
        handle = fn.options(backend="sync")()
        handle.wait(30)
        return handle
    gate = threading.Event()
    held = hold_one_worker(gate)  # the caller's wait without a timeout runs the queued task itself
    try:
        handle = fn()
        handle.wait()
        return handle
    finally:
        gate.set()
        held.get(timeout=30)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["sync", "inline"])
@pytest.mark.parametrize("guard", ["retry", "breaker"])
@pytest.mark.parametrize("answer", [False, True, None])
def test_a_failed_attempt_run_in_the_caller_asks_each_predicate_once(where: str, guard: str, answer: bool | None) -> None:
    # A task run by its caller (the sync backend, or a wait that runs a queued task
    # inline) had its error judged as the attempt ended and again as it settled: the
    # user's predicate was called twice, and one that raised noted it twice.
    predicate = CountingPredicate(answer)
    if guard == "retry":
        options: dict[str, Any] = {"retry": mp.Retry(on=predicate, attempts=2, wait_initial=0, wait_jitter=0)}
        note = "makeparallel: not retried: the retry policy's on= predicate raised RuntimeError"
    else:
        options = {"circuit_breaker": mp.CircuitBreaker("counted", on=predicate, window=5, min_calls=5)}
        note = "makeparallel: counted as a failure: circuit breaker 'counted''s on= predicate raised RuntimeError"
    handle = run_where(where, mp.parallel(**options)(raises_connection_error))
    error = handle.exception(timeout=0)
    assert isinstance(error, ConnectionError)
    assert handle.attempts == (2 if guard == "retry" and answer else 1)
    assert predicate.calls == handle.attempts  # once per attempt
    notes = getattr(error, "__notes__", [])
    assert sum(note in line for line in notes) == (1 if answer is None else 0), notes


def test_a_sync_call_cancelled_during_its_retry_wait_returns_at_once() -> None:
    # The caller slept out the whole wait, though its task had been cancelled.
    from makeparallel._task_context import _local

    def cancel_it_once_it_waits(handle: mp.AsyncHandle[Any]) -> None:
        assert wait_until(lambda: handle.status == "waiting to retry")
        handle.cancel()

    retry = mp.Retry(on=ConnectionError, attempts=2, timeout=1200.0, wait_initial=600.0, wait_max=600.0, wait_jitter=0)

    @mp.parallel(backend="sync", retry=retry)
    def fails_once() -> None:
        threading.Thread(target=cancel_it_once_it_waits, args=(_local.task,), daemon=True).start()
        raise ConnectionError("first attempt")

    handles: list[mp.AsyncHandle[None]] = []
    caller = threading.Thread(target=lambda: handles.append(fails_once()), daemon=True)
    caller.start()
    caller.join(10)
    assert not caller.is_alive(), "the caller still waits to retry a cancelled task"
    assert handles[0].cancelled()


class RefusesAfterItsFirstTask(ThreadPoolExecutor):
    """Takes one task, then refuses every other with ``refusal`` (once ``taken`` is set, if it is given)."""

    def __init__(self, refusal: Exception, taken: threading.Event | None = None) -> None:
        super().__init__(2)
        self.refusal = refusal
        self.taken = taken
        self.sent = False

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        if not self.sent:
            self.sent = True
            return super().submit(fn, *args, **kwargs)
        if self.taken is not None:
            assert self.taken.wait(30)
        raise self.refusal


class RefusesAfterItsFirstTaskElsewhere(RefusesAfterItsFirstTask):
    _makeparallel_in_process = False


def retried_on_an_executor_broken_meanwhile(where: type) -> tuple[AsyncHandle[Any], BaseException]:
    """A task whose first attempt failed and whose retry an executor of type ``where``, broken since, refused; and its error."""
    from concurrent.futures import BrokenExecutor

    with where(BrokenExecutor("the pool broke")) as executor:
        fn = mp.parallel(backend=executor, retry=mp.Retry(on=ConnectionError, attempts=3))(raises_connection_error)
        with no_retry_waits():
            handle = fn()
            with pytest.raises(ConnectionError, match="down") as caught:
                handle.get(timeout=30)
    return handle, caught.value


@pytest.mark.parametrize("where", [RefusesAfterItsFirstTask, RefusesAfterItsFirstTaskElsewhere], ids=["here", "elsewhere"])
def test_an_executor_broken_during_the_retry_wait_ends_the_task_with_its_last_error(where: type) -> None:
    # It failed with the refusal (a WorkerCrashedError for a worker that held
    # nothing), its note listing a second attempt that never ran.
    handle, error = retried_on_an_executor_broken_meanwhile(where)
    notes = "\n".join(error.__notes__)
    assert handle.attempts == 1 and "1 attempt(s) failed: attempt 1: ConnectionError" in notes
    assert "not retried again: WorkerCrashedError: " in notes and "is broken (the pool broke)" in notes


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", [RefusesAfterItsFirstTask, RefusesAfterItsFirstTaskElsewhere], ids=["here", "elsewhere"])
def test_a_retry_the_executor_refused_leaves_cancel_with_timeout_nothing_to_wait_for(where: type) -> None:
    # The refused attempt never ran and the first had returned, yet the task's
    # code read as running: cancel_with_timeout() sat out its whole timeout and
    # returned False.
    handle, _ = retried_on_an_executor_broken_meanwhile(where)
    assert handle.cancel_with_timeout(0) is True


def test_an_executors_refusal_leaves_alone_the_retry_a_waiter_runs_itself() -> None:
    # In this process a waiter takes a queued attempt and runs it: the refusal,
    # coming meanwhile, failed the task as that attempt ran, and its result was lost.
    taken = threading.Event()
    attempts: list[str] = []

    def flaky() -> str:
        attempts.append(threading.current_thread().name)
        if len(attempts) == 1:
            raise ConnectionError("first attempt")
        taken.set()  # the executor refuses this attempt now: let the refusal be handled
        for thread in threading.enumerate():
            if thread.name == "makeparallel-retry":
                thread.join(30)
        return "second attempt"

    with RefusesAfterItsFirstTask(RuntimeError("cannot schedule new futures after shutdown"), taken) as executor:
        fn = mp.parallel(backend=executor, retry=mp.Retry(on=ConnectionError, attempts=3))(flaky)
        with no_retry_waits():
            handle = fn()
            assert handle.get() == "second attempt"
    assert attempts[1] == threading.current_thread().name
    assert handle.attempts == 2 and handle.status == "succeeded"


def test_a_task_given_up_on_after_a_timeout_ends_timed_out_and_is_one_call_for_its_breaker(
    gate: threading.Event,
) -> None:
    # It ended "failed" (counted in failed_tasks), and the breaker recorded the
    # timed-out attempt twice: as it was retried, then as the task ended.
    breaker = mp.CircuitBreaker("retry-given-up", min_calls=100)
    name = f"given_up_{id(gate)}"
    with RefusesAfterItsFirstTask(RuntimeError("cannot schedule new futures after shutdown")) as executor:
        fn = mp.parallel(
            backend=executor, name=name, timeout=0.1, circuit_breaker=breaker, retry=mp.Retry(on=mp.TaskTimeoutError, attempts=3)
        )(gate.wait)
        with no_retry_waits():
            handle = fn(30)
            with pytest.raises(mp.TaskTimeoutError):
                handle.get(timeout=30)
        gate.set()
    assert handle.status == "timed out"
    metrics = mp.get_metrics(name)
    assert (metrics.timed_out_tasks, metrics.failed_tasks) == (1, 0)
    assert breaker.statistics().failed_calls == 1


def test_shutdown_as_an_attempt_runs_says_why_it_was_not_retried(gate: threading.Event) -> None:
    # The policy wanted another attempt, the pool was shut down: the note did not say why none came.
    @mp.parallel(backend="thread", retry=mp.Retry(on=ConnectionError, attempts=3))
    def down() -> None:
        assert gate.wait(30)
        raise ConnectionError("down")

    handle = down()
    assert wait_until(lambda: handle.status == "running", 30)
    stopping = threading.Thread(target=mp.shutdown, kwargs={"timeout_secs": 30})
    stopping.start()
    try:
        assert wait_until(lambda: mp.get_thread_pool_info()["closed"], 30)
        gate.set()
        with pytest.raises(ConnectionError) as caught:
            handle.get(timeout=30)
    finally:
        stopping.join(30)
        mp.reset_shutdown()
    assert "not retried again: makeparallel was shut down" in "\n".join(caught.value.__notes__)


class _CancelledHere(mp.TaskCancelledError):
    pass


# What a retry never retries and a circuit breaker never counts, whatever `on` says:
# cancellations and errors that are no Exception. Named in `on`, it can never apply.
NEVER_APPLIES: list[Any] = [
    SystemExit,
    KeyboardInterrupt,
    GeneratorExit,
    asyncio.CancelledError,
    mp.TaskCancelledError,
    _CancelledHere,
    (ConnectionError, SystemExit),
]
# Each can: it is, or is a base of, errors that are Exceptions and no cancellation.
CAN_APPLY: list[Any] = [
    BaseException,
    Exception,
    concurrent.futures.CancelledError,  # a plain future's, not a task's
    (ConnectionError, BaseException),
    mp.CircuitOpenError,
    # No Exception, but a base of one: ExceptionGroup (asyncio.TaskGroup's error) is a BaseExceptionGroup.
    *([BaseExceptionGroup, (ConnectionError, BaseExceptionGroup)] if sys.version_info >= (3, 11) else []),  # noqa: F821
]


@pytest.mark.parametrize("on", NEVER_APPLIES, ids=repr)
def test_a_retry_on_what_is_never_retried_is_refused(on: Any) -> None:
    # Accepted silently, such a policy retried nothing, and read as if it did.
    never = next(kind for kind in (on if isinstance(on, tuple) else (on,)) if kind is not ConnectionError)
    with pytest.raises(ValueError, match=rf"on names {never.__name__}, .* never retried.*Name the errors"):
        mp.Retry(on=on)


@pytest.mark.parametrize("on", CAN_APPLY, ids=repr)
def test_a_retry_on_what_can_be_retried_is_accepted(on: Any) -> None:
    assert mp.Retry(on=on).on is on


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception groups are built in from Python 3.11")
def test_a_retry_on_base_exception_group_retries_an_exception_group() -> None:
    # Refused as "never retried": an ExceptionGroup, an Exception, is a BaseExceptionGroup.
    attempts: list[int] = []

    def fails_once() -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise ExceptionGroup("one failed", [ConnectionError("refused")])  # noqa: F821
        return len(attempts)

    with no_retry_waits():
        task = mp.parallel(backend="sync", retry=mp.Retry(on=BaseExceptionGroup, attempts=2))(fails_once)  # noqa: F821
        assert task().get(timeout=30) == 2


@pytest.mark.timeout(30)
def test_the_jitter_past_a_breakers_retry_at_never_gives_up_an_attempt_its_timeout_leaves_room_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The breaker admits calls again 1.2 s on, within the policy's 1.5 s timeout; the jitter
    # added past that (up to 1 s, here its top) took the next attempt past the timeout,
    # and the retry failed at once, where it had waited for retry_at and run. The jitter
    # spreads the tasks within the time the timeout leaves.
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    policy = mp.Retry(on=mp.CircuitOpenError, attempts=3, timeout=1.5, wait_initial=0.01, wait_jitter=1.0)
    refusals = [refusal(time.time() + 1.2)]

    def refused_once() -> str:
        if refusals:
            raise refusals.pop()
        return "admitted"

    assert _retrying._apply(policy, refused_once)() == "admitted"
    assert len(slept) == 1 and 1.1 < slept[0] <= 1.5
    far = refusal(time.time() + 600)  # past the timeout: none follows, as before
    assert policy._wait_after(1, far, 1.5) > 1.5


@pytest.mark.parametrize(
    ("attempt", "error"),
    [(0, ValueError), (-3, ValueError), (1.5, TypeError), (True, TypeError), ("1", TypeError)],
)
def test_retry_wait_refuses_what_is_no_attempt(attempt: Any, error: type[Exception]) -> None:
    # It returned a wait for an attempt that never ran.
    message = rf"failed_attempt must be an int >= 1 \(1 for the first attempt\), got {re.escape(repr(attempt))}"
    with pytest.raises(error, match=message):
        mp.Retry(on=ValueError).wait(attempt)
    assert mp.Retry(on=ValueError, wait_initial=0.5, wait_jitter=0.0).wait(2) == 1.0


class _WaitFails(mp.Retry):
    """A retry policy whose own wait() raises, or returns no number of seconds (``how``)."""

    how = "raises"

    def wait(self, failed_attempt: int) -> float:
        if self.how == "raises":
            raise LookupError("no backoff table here")
        return None  # type: ignore[return-value]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["raises", "returns None"])
@pytest.mark.parametrize("way", ["thread", "sync", "caller"])
def test_a_subclass_whose_wait_fails_ends_the_task_with_its_error_and_a_note(way: str, how: str) -> None:
    # It ran as the attempt ended, on the pool's thread, under the task's lock: it killed
    # that thread, and the task never ended (get() timed out; exit waited 30 s for it);
    # in the caller's loop, its error replaced the task's. Now the task is not retried:
    # it fails with its own error, a note saying why.
    policy = _WaitFails(on=ValueError, attempts=3)
    object.__setattr__(policy, "how", how)
    notes = _notes_of_a_task_that_fails_once_under(policy, way)
    problem = "raised LookupError: no backoff table here" if how == "raises" else "returned None, not a number"
    assert any(f"not retried: the retry policy's wait(1) {problem}" in note for note in notes)


def _notes_of_a_task_that_fails_once_under(policy: mp.Retry, way: str) -> list[str]:
    """The notes of the ValueError of a task run ``way`` under ``policy``, which must not retry it."""
    calls: list[int] = []

    def fails() -> str:
        calls.append(1)
        raise ValueError("the task's own")

    with pytest.raises(ValueError, match="the task's own") as raised:
        if way == "caller":
            _retrying._apply(policy, fails)()
        else:
            mp.parallel(backend=way, retry=policy)(fails)().get(timeout=10)
    assert len(calls) == 1
    return raised.value.__notes__


class _Unprintable:
    """A value whose repr() raises."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr here")


class _WaitIsNoSeconds(mp.Retry):
    """A retry policy whose own wait() returns ``value``, no number of seconds >= 0, that repr() cannot show."""

    value: Any = None

    def wait(self, failed_attempt: int) -> float:
        return self.value  # type: ignore[no-any-return]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("value", "shown_as"),
    [(-(10**5000), "an int of about -10**5000"), (_Unprintable(), "a _Unprintable (its repr() raised RuntimeError)")],
    ids=["negative-int-past-4300-digits", "repr-raises"],
)
@pytest.mark.parametrize("way", ["thread", "sync", "caller"])
def test_a_subclass_whose_wait_returns_what_repr_cannot_show_ends_the_task_with_a_note(
    way: str, value: Any, shown_as: str
) -> None:
    # The note saying the wait was no number of seconds took repr() of it, which raised
    # (ValueError past 4300 digits, or the value's own error): on the pool's thread, under
    # the task's lock, it killed that thread and the task never ended; in the caller's
    # loop, its error replaced the task's. The task fails with its own error and the note.
    policy = _WaitIsNoSeconds(on=ValueError, attempts=3)
    object.__setattr__(policy, "value", value)
    notes = _notes_of_a_task_that_fails_once_under(policy, way)
    expected = f"not retried: the retry policy's wait(1) returned {shown_as}, not a number of seconds >= 0"
    assert any(expected in note for note in notes), notes


class _WaitsTooLongForAFloat(mp.Retry):
    """A retry policy whose own wait() gives an int too large for a float: longer than any timeout."""

    def wait(self, failed_attempt: int) -> float:
        return 10**400


@pytest.mark.timeout(60)
@pytest.mark.parametrize("way", ["thread", "sync", "caller"])
def test_a_subclass_whose_wait_is_an_int_too_large_for_a_float_waits_past_the_timeout(way: str) -> None:
    # A real number >= 0, so taken, and then float() of it raised OverflowError: it killed
    # the pool's thread (the task never ended), or replaced the task's error in the caller.
    # It is infinitely many seconds, as everywhere else seconds are read: past the
    # policy's timeout, so the task fails with its own error and a note saying why.
    policy = _WaitsTooLongForAFloat(on=ValueError, attempts=3, timeout=30)
    notes = _notes_of_a_task_that_fails_once_under(policy, way)
    assert any("the retry policy's timeout of 30 s would pass before attempt 2" in note for note in notes)
    assert policy._wait_after(1, ValueError("again"), None) == math.inf
    with no_retry_waits():
        assert policy._wait_after(1, ValueError("again"), None) == 0.0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("way", ["thread", "sync", "caller"])
def test_a_subclass_whose_wait_takes_only_the_attempt_still_retries_and_waits_for_the_breaker(way: str) -> None:
    # Retry.wait(failed_attempt) is public: a subclass overrides it for a backoff of its
    # own. The engine called it with the error and the time left as well, a TypeError
    # that killed the worker thread (the task never ended) or reached the caller in
    # place of the task's result. Its backoff is used, and a breaker's refusal still
    # waits until it admits calls (the refusal here says it does already).
    class CountedWait(mp.Retry):
        def wait(self, failed_attempt: int) -> float:
            waits.append(failed_attempt)
            return 0.0

    waits: list[int] = []
    failures: list[BaseException] = [refusal(time.time() - 1), ValueError("first")]

    def fails_twice() -> str:
        if failures:
            raise failures.pop()
        return "done"

    policy = CountedWait(on=(ValueError, mp.CircuitOpenError), attempts=3)
    if way == "caller":
        assert _retrying._apply(policy, fails_twice)() == "done"
    else:
        assert mp.parallel(backend=way, retry=policy)(fails_twice)().get(timeout=10) == "done"
    assert waits == [1, 2]


class _HourLongWaits(mp.Retry):
    """A retry policy with a backoff of its own: an hour after each failed attempt."""

    def wait(self, failed_attempt: int) -> float:
        return 3600.0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("way", ["thread", "caller"])
def test_no_retry_waits_makes_the_waits_of_a_subclass_zero(way: str) -> None:
    # A subclass's own wait() was taken as it was: in a block of no_retry_waits(), whose
    # docstring says every retry waits zero seconds, a test of a task with such a policy
    # slept through its backoff. Its wait() is still asked (where it fails, the task is
    # not retried, as outside the block), and the wait is zero.
    policy = _HourLongWaits(on=ConnectionError, attempts=3, timeout=None)
    flaky = Flaky(failures=2)
    with no_retry_waits():
        assert policy._wait_after(1, ConnectionError("reset"), None) == 0.0
        assert policy._wait_after(1, refusal(time.time() + 600), None) == 0.0
        if way == "caller":
            done = []
            caller = threading.Thread(target=lambda: done.append(_retrying._apply(policy, flaky)()), daemon=True)
            caller.start()
            caller.join(10)
            assert done == [3]
        else:
            assert mp.parallel(backend=way, retry=policy)(flaky)().get(timeout=10) == 3
    assert policy._wait_after(1, ConnectionError("reset"), None) == 3600.0


@pytest.mark.timeout(30)
def test_the_engines_retry_keeps_the_jitter_past_retry_at_within_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # The same in the engine: the task failed at once, its note saying the timeout would pass.
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    refusals = [refusal(time.time() + 0.6)]
    policy = mp.Retry(on=mp.CircuitOpenError, attempts=3, timeout=0.8, wait_initial=0.01, wait_jitter=0.5)

    @mp.parallel(backend="thread", retry=policy)
    def refused_once() -> str:
        if refusals:
            raise refusals.pop()
        return "admitted"

    assert refused_once().get(timeout=20) == "admitted"
