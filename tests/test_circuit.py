"""Circuit breakers: the count-based window, half-open trials under contention, and where it shows."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import makeparallel as mp
from handler_scripts import CALLS_UNDER_THE_LOCK, REFUSED_OR_OK
from makeparallel.testing import no_retry_waits
from pool_helpers import resize, wait_until
from test_retry import (
    CAN_APPLY,
    NEVER_APPLIES,
    pool_threads_died,
    predicate_that_raises,
    predicate_that_raises_a_base_exception,
    raises_connection_error,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def breaker_for(clock: FakeClock, **kwargs: Any) -> mp.CircuitBreaker:
    options: dict[str, Any] = {"failure_rate": 0.5, "window": 4, "min_calls": 4, "recovery_timeout": 30.0, "half_open_calls": 2}
    options.update(kwargs)
    return mp.CircuitBreaker(kwargs.pop("name", "payments"), clock=clock, **{k: v for k, v in options.items() if k != "name"})


def guarded(breaker: mp.CircuitBreaker, backend: str = "sync", **options: Any) -> mp.ParallelFunction[[bool], str]:
    runs: list[bool] = []

    def call(fail: bool) -> str:
        runs.append(fail)
        if fail:
            raise ConnectionError("payments down")
        return "paid"

    fn = mp.parallel(backend=backend, circuit_breaker=breaker, **options)(call)
    fn.runs = runs  # type: ignore[attr-defined]
    return fn


def fails_once_then_recovers(breaker: mp.CircuitBreaker, attempts: int) -> mp.ParallelFunction[[], str]:
    """On the thread pool behind ``breaker``: its first call fails (and opens it), the next succeed; refusals are retried."""
    retry = mp.Retry(on=(ConnectionError, mp.CircuitOpenError), attempts=attempts, wait_initial=0.01, wait_jitter=0, timeout=None)
    calls: list[int] = []

    @mp.parallel(backend="thread", circuit_breaker=breaker, retry=retry)
    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("down")  # it opens
        return "ok"

    return flaky


def outcome(handle: mp.AsyncHandle[Any]) -> str:
    error = handle.exception(timeout=30)
    return "ok" if error is None else type(error).__name__


def test_it_opens_at_the_failure_rate_over_the_window_and_refuses_without_running(clock: FakeClock) -> None:
    breaker = breaker_for(clock)
    pay = guarded(breaker)
    assert [outcome(pay(f)) for f in (True, False, True)] == ["ConnectionError", "ok", "ConnectionError"]
    assert breaker.state == "closed"  # 3 calls: under min_calls
    assert outcome(pay(False)) == "ok"  # 4 calls, 2 failed: 50% reaches the threshold
    assert breaker.state == "open" and breaker.state is mp.CircuitState.OPEN
    runs_before = len(pay.runs)  # type: ignore[attr-defined]
    handle = pay(False)
    assert handle.done() and not handle.running()  # already failed when returned
    error = handle.exception()
    assert isinstance(error, mp.CircuitOpenError) and isinstance(error, mp.TaskError)
    assert error.breaker == "payments" and error.failure_rate == 0.5 and error.retry_at is not None
    assert "'payments' is open (failure rate 50%)" in str(error) and "again in 30.0 s" in str(error)
    assert len(pay.runs) == runs_before  # type: ignore[attr-defined]
    stats = breaker.statistics()
    assert (stats.state, stats.failed_calls, stats.successful_calls, stats.not_permitted_calls) == ("open", 2, 2, 1)
    with pytest.raises(AttributeError):
        stats.state = "closed"  # type: ignore[misc]


def test_the_window_slides_in_constant_steps(clock: FakeClock) -> None:
    breaker = breaker_for(clock, window=4, min_calls=4, failure_rate=0.75)
    pay = guarded(breaker)
    for fail in (True, False, False, False, True, True):  # window now: F F T T... last four: F, F, T, T
        pay(fail)
    stats = breaker.statistics()
    assert stats.buffered_calls == 4 and stats.failure_rate == 0.5 and breaker.state == "closed"
    pay(True)  # last four: F, T, T, T: 75%
    assert breaker.state == "open"


@pytest.mark.timeout(60)
def test_a_window_smaller_than_min_calls_still_opens(clock: FakeClock) -> None:
    # The window never holds more than ``window`` calls: min_calls above it (the default 10
    # with window=5) would keep the breaker closed whatever failed.
    breaker = breaker_for(clock, window=3, min_calls=10)
    pay = guarded(breaker)
    assert [outcome(pay(True)) for _ in range(3)] == ["ConnectionError"] * 3
    assert breaker.state == "open" and breaker.min_calls == 3
    assert outcome(pay(False)) == "CircuitOpenError"


def test_a_window_or_trial_count_larger_than_memory_holds_only_the_calls_made(clock: FakeClock) -> None:
    # The window was allocated whole, a byte a call: window=10**9 took 1 GB at once,
    # and a larger one raised OverflowError from the constructor, or, as
    # half_open_calls, from the call that turned it half-open.
    huge = 10**20
    breaker = breaker_for(clock, window=huge, min_calls=2, half_open_calls=huge)
    pay = guarded(breaker)
    assert [outcome(pay(True)) for _ in range(2)] == ["ConnectionError"] * 2
    assert breaker.state == "open"
    clock.now += 30
    assert [outcome(pay(False)) for _ in range(3)] == ["ok"] * 3
    assert breaker.state == "half_open"  # every call is a trial, and all must succeed
    stats = breaker.statistics()
    assert (stats.buffered_calls, stats.failure_rate, stats.successful_calls) == (3, 0.0, 3)
    assert outcome(pay(True)) == "ConnectionError"
    assert breaker.state == "open" and breaker.statistics().failure_rate == 0.25


@pytest.mark.timeout(60)
def test_a_retry_admitted_as_the_breaker_turns_half_open_with_a_huge_trial_count_ends() -> None:
    # The retry's next attempt is admitted on the deadline thread: the OverflowError
    # raised there left the task waiting to retry for good.
    ticks = iter(range(0, 10**6, 30))  # each reading is a recovery_timeout later than the last
    breaker = mp.CircuitBreaker(
        "payments", window=1, min_calls=1, recovery_timeout=30, half_open_calls=10**20, clock=lambda: next(ticks)
    )
    retry = mp.Retry(on=ConnectionError, attempts=2, wait_initial=0.01, wait_jitter=0, timeout=None)
    pay = guarded(breaker, backend="thread", retry=retry)
    handle = pay(True)  # its failure opens the breaker; its retry finds it due to turn half-open
    assert isinstance(handle.exception(timeout=30), ConnectionError)
    assert handle.attempts == 2 and pay.runs == [True, True]  # type: ignore[attr-defined]
    assert breaker.state == "open"  # the trial failed


def test_past_its_recovery_timeout_it_reads_open_until_the_next_call_turns_it_half_open(clock: FakeClock) -> None:
    # As resilience4j without its automatic transition: nothing runs on a timer.
    # (A name no other test's breaker has: one of them still alive made this one "payments#2" in health().)
    breaker = breaker_for(clock, name="recovering_breaker", window=2, min_calls=2)
    pay = guarded(breaker)
    assert [outcome(pay(True)) for _ in range(2)] == ["ConnectionError"] * 2
    clock.now += 30
    assert breaker.state == "open" and breaker.statistics().state == "open"
    assert any("'recovering_breaker' is open" in reason for reason in mp.health(memory_limit_percent=100)["reasons"])
    assert outcome(pay(False)) == "ok"  # the first trial
    assert breaker.state == "half_open"


def test_errors_outside_on_count_as_successes(clock: FakeClock) -> None:
    breaker = breaker_for(clock, on=ConnectionError)

    @mp.parallel(backend="sync", circuit_breaker=breaker)
    def bad_request() -> None:
        raise ValueError("the dependency answered: your input is wrong")

    for _ in range(6):
        bad_request().exception()
    assert breaker.state == "closed" and breaker.statistics().successful_calls == 6


def test_slow_calls_open_it(clock: FakeClock) -> None:
    breaker = breaker_for(clock, slow_call_seconds=0.0, slow_call_rate=1.0)
    pay = guarded(breaker)
    for _ in range(4):
        assert outcome(pay(False)) == "ok"
    assert breaker.state == "open" and breaker.statistics().slow_calls == 4


def test_a_breaker_opened_by_slow_calls_says_so(clock: FakeClock) -> None:
    # Its refusals and health() named the failure rate alone: "open (failure rate 0%)".
    breaker = breaker_for(clock, name="slow_breaker", slow_call_seconds=0.0, slow_call_rate=1.0)
    try:
        pay = guarded(breaker)
        for _ in range(4):
            assert outcome(pay(False)) == "ok"
        error = pay(False).exception()
        assert isinstance(error, mp.CircuitOpenError)
        assert "is open (failure rate 0%, slow-call rate 100%)" in str(error)
        reasons = mp.health(memory_limit_percent=100)["reasons"]
        assert any("'slow_breaker' is open (failure rate 0%, slow-call rate 100%)" in reason for reason in reasons)
    finally:
        breaker.reset()


def test_half_open_admits_exactly_its_trials_under_8_submitting_threads(clock: FakeClock, gate: threading.Event) -> None:
    resize(4)
    breaker = breaker_for(clock, half_open_calls=2)
    breaker.force_open()
    breaker.reset()  # closed, counts cleared
    pay = guarded(breaker, backend="sync")
    for _ in range(4):
        pay(True)
    assert breaker.state == "open"
    clock.now += 30.0  # the recovery time passed

    started = threading.Event()
    entered: list[int] = []

    @mp.parallel(circuit_breaker=breaker)
    def trial() -> str:
        entered.append(1)
        started.set()
        assert gate.wait(30)
        return "ok"

    barrier = threading.Barrier(8)
    handles: list[mp.AsyncHandle[str]] = []
    lock = threading.Lock()

    def submit() -> None:
        barrier.wait()
        handle = trial()
        with lock:
            handles.append(handle)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    refused = [h for h in handles if h.done()]
    admitted = [h for h in handles if not h.done()]
    assert len(handles) == 8 and len(admitted) == 2 and len(refused) == 6
    assert breaker.state == "half_open"
    assert all(isinstance(h.exception(), mp.CircuitOpenError) for h in refused)
    assert "half-open" in str(refused[0].exception())
    gate.set()
    assert [h.get(timeout=30) for h in admitted] == ["ok", "ok"]
    assert breaker.state == "closed"  # both trials succeeded
    assert len(entered) == 2


def test_a_failed_trial_opens_it_again(clock: FakeClock) -> None:
    breaker = breaker_for(clock, half_open_calls=2)
    pay = guarded(breaker)
    for _ in range(4):
        pay(True)
    clock.now += 31
    assert outcome(pay(False)) == "ok"
    assert breaker.state == "half_open"
    assert outcome(pay(True)) == "ConnectionError"
    assert breaker.state == "open"
    assert outcome(pay(False)) == "CircuitOpenError"  # a new recovery time started


def test_a_failed_trial_opens_it_at_the_trials_failure_rate(clock: FakeClock) -> None:
    # Opened again, it gave the rate of the window that first opened it (75%),
    # whatever the trials showed: as in resilience4j, half-open rates are the trials'.
    breaker = breaker_for(clock, half_open_calls=2)
    pay = guarded(breaker)
    for fail in (True, True, False, True):
        pay(fail)
    assert (breaker.state, breaker.statistics().failure_rate) == ("open", 0.75)
    clock.now += 31
    assert outcome(pay(False)) == "ok"
    half_open = breaker.statistics()
    assert (half_open.state, half_open.failure_rate, half_open.buffered_calls) == ("half_open", 0.0, 1)
    assert outcome(pay(True)) == "ConnectionError"
    reopened = breaker.statistics()
    assert (reopened.state, reopened.failure_rate, reopened.buffered_calls) == ("open", 0.5, 2)
    refusal = pay(False).exception()
    assert isinstance(refusal, mp.CircuitOpenError)
    assert refusal.failure_rate == 0.5 and "is open (failure rate 50%)" in str(refusal)


def raises_no_answer(kind: str) -> str:
    """Fails with an error that is no ``Exception``, or a cancellation, raised by the task's own code."""
    if kind == "fail":
        raise ConnectionError("payments down")
    if kind == "ok":
        return "paid"
    errors: dict[str, BaseException] = {
        "CancelledError": asyncio.CancelledError(),
        "SystemExit": SystemExit(3),
        "KeyboardInterrupt": KeyboardInterrupt(),
        "TaskCancelledError": mp.TaskCancelledError("the call it waited for was cancelled"),
    }
    raise errors[kind]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process"])
@pytest.mark.parametrize("kind", ["CancelledError", "SystemExit", "KeyboardInterrupt", "TaskCancelledError"])
def test_a_trial_that_ends_with_no_answer_neither_closes_nor_counts(backend: str, kind: str, clock: FakeClock) -> None:
    # Such an ending was recorded as a success (it is not a failure that `on` names): a
    # half-open trial that raised asyncio.CancelledError closed the breaker, as though the
    # dependency had answered. Cancellations count as nothing; so do these, and the trial
    # permit goes back, for the next call to take.
    breaker = breaker_for(clock, half_open_calls=1)
    call = mp.parallel(backend=backend, circuit_breaker=breaker)(raises_no_answer)
    for _ in range(4):
        assert isinstance(call("fail").exception(timeout=30), ConnectionError)
    clock.now += 31
    trial = call(kind)
    assert type(trial.exception(timeout=30)).__name__ == kind
    stats = breaker.statistics()
    assert (stats.state, stats.successful_calls, stats.failed_calls, stats.buffered_calls) == ("half_open", 0, 4, 0)
    assert call("fail").exception(timeout=30).__class__ is ConnectionError  # the permit came back: a trial ran
    assert breaker.state == "open"


def test_reset_and_force_open(clock: FakeClock) -> None:
    breaker = breaker_for(clock)
    pay = guarded(breaker)
    breaker.force_open()
    clock.now += 10_000  # forced open stays open
    error = pay(False).exception()
    assert isinstance(error, mp.CircuitOpenError) and "forced open" in str(error) and error.retry_at is None
    breaker.reset()
    assert breaker.state == "closed" and outcome(pay(False)) == "ok"
    assert breaker.statistics().not_permitted_calls == 0 and breaker.statistics().successful_calls == 1


@pytest.mark.parametrize(
    ("options", "failures_first"),
    [({}, 0), ({}, 2), ({"slow_call_seconds": 60.0}, 0)],
    ids=["closed", "opened by failures", "slow calls measured"],
)
def test_a_breaker_forced_open_says_so_not_a_rate(clock: FakeClock, options: dict[str, Any], failures_first: int) -> None:
    # Its refusals and health() said "is open (failure rate 0%)": a rate that opens no breaker.
    breaker = breaker_for(clock, name="forced_breaker", **options)
    try:
        pay = guarded(breaker)
        for fail in [True, False] * failures_first:
            pay(fail).exception(timeout=30)
        breaker.force_open()
        error = pay(False).exception(timeout=30)
        assert isinstance(error, mp.CircuitOpenError) and error.retry_at is None
        assert str(error).startswith("circuit breaker 'forced_breaker' is open (forced open by force_open()): ")
        assert str(error).endswith("; breaker.reset() closes it") and "rate" not in str(error)
        reasons = mp.health(memory_limit_percent=100)["reasons"]
        about_it = [reason for reason in reasons if "'forced_breaker" in reason]  # (or 'forced_breaker#2': one of a case before)
        assert len(about_it) == 1 and about_it[0].endswith("' is open (forced open by force_open()): calls through it are refused")
    finally:
        breaker.reset()


@pytest.mark.parametrize(
    ("calls_before", "state", "rate"),
    [
        ([], "closed", 0.0),
        ([True] * 4 + [False] * 2 + [True, False, False, False], "closed", 0.25),  # opened at 100%, closed, 1 of 4 since
        ([True] * 4, "open", 1.0),
        ([True] * 4 + [False], "half_open", 0.0),  # one trial in, which succeeded
    ],
    ids=["never opened", "opened and closed since", "opened by failures", "half-open"],
)
def test_a_breaker_forced_open_refuses_with_the_window_failure_rate(
    clock: FakeClock, calls_before: list[bool], state: str, rate: float
) -> None:
    # Its refusals carried the rate of its last opening (100%, closed since) as failure_rate.
    breaker = breaker_for(clock)
    pay = guarded(breaker)
    for number, fail in enumerate(calls_before):
        if number == 4:
            clock.now += 30  # the recovery time: the next calls are trials
        pay(fail).exception(timeout=30)
    assert breaker.state == state
    breaker.force_open()
    error = pay(False).exception(timeout=30)
    assert isinstance(error, mp.CircuitOpenError) and "forced open" in str(error)
    assert error.failure_rate == breaker.statistics().failure_rate == rate


def test_state_changes_are_circuit_events(clock: FakeClock) -> None:
    breaker = breaker_for(clock, name="events_breaker")
    pay = guarded(breaker, backend="thread")
    seen: list[mp.TaskEvent] = []
    opened = threading.Event()

    def listen(event: mp.TaskEvent) -> None:
        if event.kind == "circuit":
            seen.append(event)
            if event.new_state == "open":
                opened.set()

    mp.add_task_listener(listen)
    try:
        for _ in range(4):
            pay(True).exception(timeout=30)
        assert opened.wait(30)
        breaker.reset()
    finally:
        mp.remove_task_listener(listen)
    assert [(e.breaker, e.old_state, e.new_state) for e in seen] == [
        ("events_breaker", "closed", "open"),
        ("events_breaker", "open", "closed"),
    ]
    assert seen[0].name == "events_breaker" and seen[0].status == "open" and seen[0].task_id == 0


def test_calls_through_one_breaker_run_in_parallel(clock: FakeClock) -> None:
    resize(2)
    breaker = breaker_for(clock)
    both = threading.Barrier(2)

    @mp.parallel(circuit_breaker=breaker)
    def meet() -> bool:
        both.wait(30)  # only returns if the other call runs at the same time
        return True

    assert mp.gather([meet(), meet()], timeout=30) == [True, True]


def test_one_breaker_guards_many_functions(clock: FakeClock) -> None:
    breaker = breaker_for(clock)
    charge, refund = guarded(breaker), guarded(breaker)
    for fail in (True, True):
        charge(fail)
        refund(fail)
    assert breaker.state == "open"
    assert outcome(refund(False)) == "CircuitOpenError"


def test_health_is_degraded_while_open(clock: FakeClock) -> None:
    breaker = breaker_for(clock, name="health_breaker")
    breaker.force_open()
    report = mp.health(memory_limit_percent=100)
    assert report["status"] == "degraded"
    assert any("'health_breaker' is open" in reason for reason in report["reasons"])
    breaker.reset()
    assert not any("health_breaker" in reason for reason in mp.health(memory_limit_percent=100)["reasons"])


def test_prometheus_series(clock: FakeClock) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from makeparallel.prometheus import register

    breaker = breaker_for(clock, name="prom_breaker")
    pay = guarded(breaker)
    for _ in range(4):
        pay(True)
    pay(False)
    registry = CollectorRegistry()
    register(registry)
    page = generate_latest(registry).decode()
    assert 'makeparallel_circuit_state{breaker="prom_breaker",state="open"} 1.0' in page
    assert 'makeparallel_circuit_state{breaker="prom_breaker",state="closed"} 0.0' in page
    assert 'makeparallel_circuit_calls_total{breaker="prom_breaker",kind="failed"} 4.0' in page
    assert 'makeparallel_circuit_calls_total{breaker="prom_breaker",kind="not_permitted"} 1.0' in page


def test_breakers_of_one_name_are_told_apart_in_the_metrics_and_health(clock: FakeClock) -> None:
    """Two live breakers of one name (an app factory run twice) each show, as themselves, everywhere.

    Keyed by name, one hid the other: the one forced open read closed in the
    metrics and Prometheus while health() said open.
    """
    from prometheus_client import CollectorRegistry, generate_latest

    from makeparallel.prometheus import register

    first = breaker_for(clock, name="twin_breaker")
    second = breaker_for(clock, name="twin_breaker")
    named_like_a_label = breaker_for(clock, name="twin_breaker#2")
    registry = CollectorRegistry()
    register(registry)
    for opened, closed, label in ((second, first, "twin_breaker#3"), (first, second, "twin_breaker")):
        closed.reset()
        opened.force_open()
        snapshot = mp.metrics_snapshot()["circuit_breakers"]
        assert [snapshot[key]["name"] for key in ("twin_breaker", "twin_breaker#2", "twin_breaker#3")] == [
            "twin_breaker",
            "twin_breaker#2",
            "twin_breaker",
        ]
        assert [key for key, stats in snapshot.items() if stats["state"] == "open"] == [label]
        page = generate_latest(registry).decode()
        assert f'makeparallel_circuit_state{{breaker="{label}",state="open"}} 1.0' in page
        assert re.findall(r'breaker="(twin_breaker[^"]*)",state="open"} 1.0', page) == [label]
        reasons = [reason for reason in mp.health(memory_limit_percent=100)["reasons"] if "twin_breaker" in reason]
        assert len(reasons) == 1 and f"{label!r} is open" in reasons[0]
    del opened, closed, first  # the one left of its name is known by its name again
    gc.collect()
    second.force_open()
    snapshot = mp.metrics_snapshot()["circuit_breakers"]
    assert {key for key in snapshot if key.startswith("twin_breaker")} == {"twin_breaker", "twin_breaker#2"}
    assert snapshot["twin_breaker"]["state"] == "open"
    assert snapshot["twin_breaker#2"]["name"] == "twin_breaker#2"
    assert named_like_a_label.state == "closed"
    second.reset()


# -- with retries -----------------------------------------------------------------------------


def test_a_refused_call_is_not_retried_unless_on_names_it(clock: FakeClock) -> None:
    breaker = breaker_for(clock)
    breaker.force_open()
    pay = guarded(breaker, backend="thread", retry=mp.Retry(on=Exception, attempts=5))
    handle = pay(False)
    assert isinstance(handle.exception(timeout=30), mp.CircuitOpenError)
    assert handle.attempts == 1  # the refused one


@pytest.mark.parametrize(
    "retry",
    [None, mp.Retry(on=ConnectionError, attempts=3), mp.Retry(on=mp.CircuitOpenError, attempts=1)],
    ids=["no policy", "on does not name it", "one attempt"],
)
def test_a_call_refused_outright_made_one_attempt_as_each_refused_retry_is_one(
    clock: FakeClock, retry: mp.Retry | None
) -> None:
    # It said 0, while the same refusal followed by retries counted as an attempt.
    breaker = breaker_for(clock)
    breaker.force_open()
    handle = guarded(breaker, backend="thread", retry=retry)(False)
    assert isinstance(handle.exception(timeout=30), mp.CircuitOpenError)
    assert (handle.status, handle.attempts) == ("failed", 1)


@pytest.mark.timeout(30)
def test_cancel_with_timeout_of_a_refused_call_finds_no_code_running(clock: FakeClock) -> None:
    # It sat out its whole timeout, then said the code still ran: the call never ran.
    breaker = breaker_for(clock)
    breaker.force_open()
    handle = guarded(breaker, backend="thread")(False)
    assert handle.cancel_with_timeout(10) is True


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process", "sync on a running loop"])
def test_cancel_with_timeout_of_a_refused_call_waiting_to_retry_finds_no_code_running(
    clock: FakeClock, backend: str
) -> None:
    # Accepted to be retried, it sat out the whole timeout, then said the code still ran:
    # the call never ran.
    breaker = breaker_for(clock)
    breaker.force_open()
    retry = mp.Retry(on=mp.CircuitOpenError, attempts=2, wait_initial=600, wait_max=600, wait_jitter=0, timeout=None)

    async def async_call() -> str:
        return "paid"

    if backend == "sync on a running loop":
        fn: Any = mp.parallel(backend="sync", circuit_breaker=breaker, retry=retry)(async_call)
    else:
        fn = guarded(breaker, backend=backend, retry=retry)

    async def on_a_loop() -> mp.AsyncHandle[str]:
        return fn()  # type: ignore[no-any-return]

    handle = asyncio.run(on_a_loop()) if backend == "sync on a running loop" else fn(False)
    assert handle.status == "waiting to retry"
    assert handle.cancel_with_timeout(10) is True
    assert handle.cancelled()


def test_a_refused_call_is_retried_when_on_names_it(clock: FakeClock) -> None:
    breaker = breaker_for(clock)
    pay = guarded(breaker, backend="thread", retry=mp.Retry(on=(mp.CircuitOpenError,), attempts=5))
    for _ in range(4):
        pay(True).exception(timeout=30)
    assert breaker.state == "open"

    def recover_at_the_first_retry(event: mp.TaskEvent) -> None:
        if event.kind == "retry":
            assert isinstance(event.error, mp.CircuitOpenError)
            clock.now = max(clock.now, 1000.0 + 31)

    mp.add_task_listener(recover_at_the_first_retry)
    try:
        with no_retry_waits():
            handle = pay(False)
            assert handle.get(timeout=30) == "paid"  # refused first, then run once recovered
    finally:
        mp.remove_task_listener(recover_at_the_first_retry)
    assert handle.attempts >= 2
    refused_all = guarded(breaker_for(clock), backend="thread", retry=mp.Retry(on=(mp.CircuitOpenError,), attempts=3))
    refused_all._spec.breaker.force_open()  # type: ignore[union-attr]
    with no_retry_waits():
        handle = refused_all(False)
        error = handle.exception(timeout=30)
    assert isinstance(error, mp.CircuitOpenError) and handle.attempts == 3


def refused_for_ten_minutes() -> str:
    """A task whose own code is refused by a dependency's breaker that admits calls again in ten minutes."""
    raise mp.CircuitOpenError(
        "circuit breaker 'db' is open", breaker="db", failure_rate=1.0, retry_at=time.time() + 600
    )


async def paid_async(fail: bool) -> str:
    return "paid"


def refused_for_ten_minutes_by(how: str, clock: FakeClock, retry: mp.Retry) -> mp.ParallelFunction[..., str]:
    """A function whose first attempt fails with a CircuitOpenError whose retry_at is ten minutes on (fake clock)."""
    backend = how.split(" on ")[-1]
    if how.startswith("raised"):
        return mp.parallel(backend=backend, retry=retry)(refused_for_ten_minutes)
    breaker = breaker_for(clock, window=1, min_calls=1, recovery_timeout=600.0)
    assert outcome(guarded(breaker)(True)) == "ConnectionError" and breaker.state == "open"
    if how.startswith("refused async"):
        return mp.parallel(backend=backend, circuit_breaker=breaker, retry=retry)(paid_async)
    return guarded(breaker, backend=backend, retry=retry)


RECOVERING = [
    "refused on thread",
    "refused on process",
    "refused async def on thread",
    "raised on thread",
    "raised on process",
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", RECOVERING)
def test_a_retry_after_an_open_breaker_waits_until_it_admits_calls_again(how: str, clock: FakeClock) -> None:
    # The next attempt came after the policy's backoff, 10 ms, while the breaker stayed
    # open for 600 s: each was refused at once, every retry spent in milliseconds.
    retry = mp.Retry(on=mp.CircuitOpenError, attempts=2, timeout=None, wait_initial=0.01, wait_max=0.01, wait_jitter=0)
    fn = refused_for_ten_minutes_by(how, clock, retry)
    waits: list[float] = []
    retried = threading.Event()

    def on_retry(event: mp.TaskEvent) -> None:
        if event.kind == "retry" and event.name == fn._spec.name:
            waits.append(event.wait)  # type: ignore[arg-type]
            retried.set()

    mp.add_task_listener(on_retry)
    handle = None
    try:
        handle = fn(False) if how.startswith("refused") else fn()
        assert retried.wait(30)
        assert handle.status == "waiting to retry" and handle.attempts == 1
        assert 500 < waits[0] <= 600  # the breaker's time, not the backoff (no sleeping for it here)
    finally:
        mp.remove_task_listener(on_retry)
        if handle is not None:
            handle.cancel()
    assert handle.cancelled()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", [*RECOVERING, "refused on sync", "raised on sync"])
def test_a_retry_whose_timeout_ends_before_the_breaker_admits_calls_fails_at_once(how: str, clock: FakeClock) -> None:
    # Its attempts were all spent, refused, within its timeout; the next attempt cannot
    # come before the breaker's 600 s, past the policy's 5 s: none follows.
    retry = mp.Retry(on=mp.CircuitOpenError, attempts=5, timeout=5.0, wait_initial=0.01, wait_max=0.01, wait_jitter=0)
    fn = refused_for_ten_minutes_by(how, clock, retry)
    handle = fn(False) if how.startswith("refused") else fn()
    error = handle.exception(timeout=30)
    assert isinstance(error, mp.CircuitOpenError) and handle.attempts == 1
    assert "the retry policy's timeout of 5 s would pass before attempt 2" in "\n".join(error.__notes__)


def test_retries_of_a_guarded_call_are_each_recorded(clock: FakeClock) -> None:
    breaker = breaker_for(clock, window=10, min_calls=10)
    calls = iter([True, True, False])

    @mp.parallel(circuit_breaker=breaker, retry=mp.Retry(on=ConnectionError, attempts=3))
    def flaky() -> str:
        if next(calls):
            raise ConnectionError("down")
        return "up"

    with no_retry_waits():
        assert flaky().get(timeout=30) == "up"
    stats = breaker.statistics()
    assert (stats.failed_calls, stats.successful_calls) == (2, 1)


# -- other processes ---------------------------------------------------------------------------


def test_a_breaker_refuses_to_be_pickled_naming_itself(clock: FakeClock) -> None:
    # Its lock made pickle say "cannot pickle '_thread.lock' object", naming no breaker.
    breaker = breaker_for(clock, name="pickled_breaker")
    for send in (pickle.dumps, copy.deepcopy):
        with pytest.raises(TypeError, match=r"CircuitBreaker 'pickled_breaker' cannot be pickled.*circuit_breaker="):
            send(breaker)


@pytest.mark.timeout(60)
def test_a_process_task_that_refers_to_a_breaker_fails_at_submission_naming_it(clock: FakeClock) -> None:
    # A closure, as a function of the main script, goes by value with the globals and cells it uses.
    breaker = breaker_for(clock, name="closure_breaker")

    def state() -> str:
        return breaker.state

    with pytest.raises(mp.TaskSerializationError, match="CircuitBreaker 'closure_breaker' cannot be pickled"):
        mp.parallel(backend="process")(state)()


def test_a_copy_of_a_guarded_function_is_the_function_itself(clock: FakeClock) -> None:
    # copy.copy and copy.deepcopy went through __reduce__, which sends a function to another
    # process without its breaker: the copy (of an object holding the function, too) ran
    # while its breaker was open, with a max_concurrent limiter of its own.
    breaker = breaker_for(clock, name="copied_breaker")
    breaker.force_open()
    pay = guarded(breaker, max_concurrent=1)
    client = {"pay": pay}
    for copied in (copy.copy(pay), copy.deepcopy(pay), copy.deepcopy(client)["pay"]):
        assert outcome(copied(False)) == "CircuitOpenError"
        assert copied is pay
    assert pay.runs == []  # type: ignore[attr-defined]


def test_a_copy_of_a_guarded_method_is_bound_as_a_copy_of_a_method_is(clock: FakeClock) -> None:
    # Its attributes come from its function: copy.copy recursed for good, and copy.deepcopy,
    # given the function's own, gave the function, unbound.
    breaker = breaker_for(clock, name="copied_method_breaker")

    class Client:
        def __init__(self) -> None:
            self.calls: list[str] = []

        @mp.parallel(backend="sync", circuit_breaker=breaker)
        def pay(self) -> str:
            self.calls.append("paid")
            return "paid"

    client = Client()
    shallow, deep = copy.copy(client.pay), copy.deepcopy({"pay": client.pay})["pay"]
    assert shallow().get(timeout=10) == "paid" and client.calls == ["paid"]
    assert deep().get(timeout=10) == "paid" and client.calls == ["paid"]  # its own copy of the client
    assert breaker.statistics().successful_calls == 2
    breaker.force_open()
    assert outcome(deep()) == "CircuitOpenError"


# -- bad input ---------------------------------------------------------------------------------


# Each message gives the rule, the value and what to pass instead. A wrong type is a TypeError,
# a value of the right type out of range a ValueError: an empty name was a TypeError.
@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"name": ""}, ValueError, r"^name must be a non-empty str, the dependency .* \(CircuitBreaker\('payments'\)\), got ''$"),
        ({"name": 3}, TypeError, r"^name must be a str, the dependency .* \(CircuitBreaker\('payments'\)\), got 3$"),
        ({"failure_rate": 0}, ValueError, r"^failure_rate must be in \(0, 1\], a fraction of the calls \(0.5 for half\), got 0$"),
        ({"failure_rate": 50}, ValueError, r"^failure_rate must be in \(0, 1\], a fraction .*, got 50$"),
        ({"failure_rate": float("nan")}, ValueError, r"^failure_rate must be in \(0, 1\], .*, got nan$"),
        # Past 4300 digits repr() of an int raises ValueError itself: the message was that one.
        ({"failure_rate": 10**5000}, ValueError, r"^failure_rate must be in .*, got an int of about 10\*\*5000$"),
        ({"failure_rate": "half"}, TypeError, r"^failure_rate must be a number in \(0, 1\], a fraction .*, got 'half'$"),
        ({"slow_call_rate": -0.1}, ValueError, r"^slow_call_rate must be in \(0, 1\], .*, got -0.1$"),
        ({"window": 0}, ValueError, r"^window must be an int >= 1, got 0$"),
        ({"window": -(10**5000)}, ValueError, r"^window must be an int >= 1, got an int of about -10\*\*5000$"),
        ({"min_calls": 2.5}, TypeError, r"^min_calls must be an int >= 1, got 2.5$"),
        ({"half_open_calls": 0}, ValueError, r"^half_open_calls must be an int >= 1, got 0$"),
        ({"recovery_timeout": -1}, ValueError, r"^recovery_timeout must be a finite number of seconds >= 0, got -1$"),
        ({"recovery_timeout": None}, TypeError, r"^recovery_timeout must be a number of seconds, got None$"),
        ({"slow_call_seconds": "1"}, TypeError, r"^slow_call_seconds must be a number of seconds or None, got '1'$"),
        ({"slow_call_seconds": float("inf")}, ValueError, r"^slow_call_seconds must be .* >= 0 or None, got inf$"),
        # Ints too large for a float: OverflowError, where infinity was refused.
        ({"recovery_timeout": 10**400}, ValueError, r"recovery_timeout must be a finite .*, got an int of about 10\*\*400$"),
        ({"slow_call_seconds": 10**400}, ValueError, "slow_call_seconds must be a finite"),
        ({"on": int}, TypeError, "on must be"),
        ({"on": ()}, ValueError, r"^on must name at least one exception type, got an empty tuple: name the errors .*on=ConnectionError"),
        ({"clock": 3}, TypeError, r"^clock must be a callable returning seconds, got 3$"),
        # Taken, it raised TypeError from the call that opened the breaker, and from every call after.
        (
            {"clock": lambda now: now},
            TypeError,
            (
                r"^clock must take no arguments, as it is called for the time in seconds as the breaker opens and while "
                r"it is open; <lambda> cannot: missing a required argument: 'now'\. Pass a function of no arguments, "
                r"as lambda: \.\.\.$"
            ),
        ),
    ],
)
def test_bad_input_names_the_argument(kwargs: dict[str, Any], error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        mp.CircuitBreaker(**{"name": "bad", **kwargs})


def test_the_option_takes_a_breaker_only() -> None:
    with pytest.raises(TypeError, match="circuit_breaker must be a makeparallel.CircuitBreaker"):
        mp.parallel(circuit_breaker="payments")


def test_state_is_a_str_enum() -> None:
    assert mp.CircuitState.HALF_OPEN == "half_open" and str(mp.CircuitState.OPEN) == "open"
    assert isinstance(mp.CircuitState.CLOSED, str)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process"])
@pytest.mark.parametrize("predicate", [predicate_that_raises, predicate_that_raises_a_base_exception])
def test_an_error_whose_predicate_raises_counts_as_a_failure_and_kills_no_thread(
    backend: str, clock: FakeClock, predicate: Callable[[BaseException], bool]
) -> None:
    # Asked as the call ended, on a worker thread or on the process pool's loop thread, the
    # predicate's error killed that thread, and a half-open breaker never got its trial back.
    died = pool_threads_died(backend)
    breaker = breaker_for(clock, min_calls=2, window=2, on=predicate)
    fn = mp.parallel(backend=backend, circuit_breaker=breaker)(raises_connection_error)
    kind = "RuntimeError" if predicate is predicate_that_raises else "NotAnException"
    for _ in range(2):
        with pytest.raises(ConnectionError, match="down") as caught:
            fn().get(timeout=30)
        assert (
            f"makeparallel: counted as a failure: circuit breaker 'payments''s on= predicate raised {kind}: "
            "the predicate's own bug" in "\n".join(getattr(caught.value, "__notes__", []))
        )
    assert breaker.state == "open"
    clock.now += 31  # half open: the trial's end is recorded, and it fails again
    with pytest.raises(ConnectionError):
        fn().get(timeout=30)
    assert breaker.state == "open"
    assert pool_threads_died(backend) == died


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("backend", "timeout"), [("thread", None), ("thread", 0.05), ("process", None)])
def test_a_predicate_that_calls_the_library_deadlocks_no_pool(
    backend: str, timeout: float | None, clock: FakeClock, gate: threading.Event
) -> None:
    # Asked under the pool's lock as the call ended (on a worker thread, the process pool's
    # loop thread, or the deadline thread for a timeout), a predicate that read the pool's
    # info waited for that lock for good, and the pool, holding it, with it.
    pool_info = mp.get_process_pool_info if backend == "process" else mp.get_thread_pool_info
    asked = threading.Event()

    def down_and_logged(error: BaseException) -> bool:
        pool_info()
        asked.set()
        return True

    breaker = breaker_for(clock, on=down_and_logged)
    task = raises_connection_error if timeout is None else gate.wait
    fn = mp.parallel(backend=backend, circuit_breaker=breaker, timeout=timeout)(task)
    handle = fn() if timeout is None else fn(30)
    assert asked.wait(30)
    gate.set()
    assert isinstance(handle.exception(timeout=30), ConnectionError if timeout is None else mp.TaskTimeoutError)
    assert breaker.statistics().failed_calls == 1


def breaker_reading_health(clock: FakeClock, asked: list[BaseException]) -> mp.CircuitBreaker:
    """A breaker whose predicate reads ``health()``, which takes every pool's lock, and notes each error it was asked about."""

    def down_and_logged(error: BaseException) -> bool:
        mp.health()
        asked.append(error)
        return True

    return breaker_for(clock, on=down_and_logged)


def held_until(gate: threading.Event, started: threading.Event) -> Callable[[], None]:
    """A task that says it started, then waits for ``gate``."""

    def held() -> None:
        started.set()
        assert gate.wait(30)

    return held


def submitted_from_a_loop(fn: Callable[[], Any], count: int) -> list[mp.AsyncHandle[Any]]:
    """``count`` calls of ``fn`` made on a running event loop: one over its limit waits for its slot there."""

    async def submit() -> list[mp.AsyncHandle[Any]]:
        return [fn() for _ in range(count)]

    return asyncio.run(submit())


@pytest.mark.timeout(60)
def test_a_predicate_that_calls_the_library_deadlocks_no_shutdown_of_a_call_waiting_for_its_slot(
    clock: FakeClock, gate: threading.Event
) -> None:
    # Shutdown ends a call that waits for its max_concurrent slot with ShutdownError, under the
    # pool's lock: the breaker asked about it there waited for that lock for good, and so did
    # the shutdown and the pool.
    asked: list[BaseException] = []
    started = threading.Event()

    held = mp.parallel(backend="thread", circuit_breaker=breaker_reading_health(clock, asked), max_concurrent=1)(
        held_until(gate, started)
    )
    first, waiting = submitted_from_a_loop(held, 2)
    assert started.wait(30)
    shutting_down = threading.Thread(target=mp.shutdown, kwargs={"timeout_secs": 0.1})
    shutting_down.start()
    shutting_down.join(30)
    assert not shutting_down.is_alive(), "shutdown waited for good"
    error = waiting.exception(timeout=30)
    assert isinstance(error, mp.ShutdownError)
    assert asked == [error]
    gate.set()
    assert first.exception(timeout=30) is None


@pytest.mark.timeout(60)
def test_a_predicate_that_calls_the_library_deadlocks_no_executor_that_refuses_a_call_that_waited_for_its_slot(
    clock: FakeClock, gate: threading.Event
) -> None:
    # The call's slot came after the executor shut down: it ends with the refusal, under the
    # executor's lock, where its breaker asked about it waited for that lock for good.
    asked: list[BaseException] = []
    started = threading.Event()
    with ThreadPoolExecutor(1) as executor:
        held = mp.parallel(backend=executor, circuit_breaker=breaker_reading_health(clock, asked), max_concurrent=1)(
            held_until(gate, started)
        )
        first, waiting = submitted_from_a_loop(held, 2)
        assert started.wait(30)
        executor.shutdown(wait=False)
        gate.set()
        error = waiting.exception(timeout=30)
        assert isinstance(error, mp.ShutdownError)
        assert asked == [error]
        assert first.exception(timeout=30) is None


@pytest.mark.timeout(60)
def test_a_predicate_that_calls_the_library_deadlocks_no_sync_call_whose_loop_closed_as_it_waited_for_its_slot(
    clock: FakeClock, gate: threading.Event
) -> None:
    # Its slot came after the loop it was to run on closed: it ends with ShutdownError under the
    # "sync" backend's lock, where its breaker asked about it waited for that lock for good.
    asked: list[BaseException] = []
    started = threading.Event()
    mp.set_max_concurrent_tasks(1)  # (put back after each test)

    held = mp.parallel(backend="thread")(held_until(gate, started))
    on_the_loop = mp.parallel(backend="sync", circuit_breaker=breaker_reading_health(clock, asked))(lambda: None)
    first = held()
    assert started.wait(30)
    (waiting,) = submitted_from_a_loop(on_the_loop, 1)
    gate.set()
    error = waiting.exception(timeout=30)
    assert isinstance(error, mp.ShutdownError)
    assert asked == [error]
    assert first.exception(timeout=30) is None


@pytest.mark.timeout(60)
def test_a_held_sync_call_whose_loop_closed_asks_its_breaker_once(clock: FakeClock, gate: threading.Event) -> None:
    # Two find its loop closed: its admission, and a wait for it that looks at its loop. Each
    # ended it and asked its breaker, which counted the call's failure twice (its
    # ShutdownError now counts as nothing). Here the wait looks while the admission asks
    # the breaker.
    asked: list[BaseException] = []
    waiting: list[mp.AsyncHandle[Any]] = []
    started, first_asked = threading.Event(), threading.Event()
    mp.set_max_concurrent_tasks(1)  # (put back after each test)

    def down_and_waited_for(error: BaseException) -> bool:
        asked.append(error)
        if len(asked) == 1:  # the admission asks: a wait looks now
            with contextlib.suppress(mp.TaskTimeoutError):
                waiting[0].exception(timeout=0)
            first_asked.set()
        return True

    held = mp.parallel(backend="thread")(held_until(gate, started))
    on_the_loop = mp.parallel(backend="sync", circuit_breaker=breaker_for(clock, on=down_and_waited_for))(lambda: None)
    first = held()
    assert started.wait(30)
    waiting.extend(submitted_from_a_loop(on_the_loop, 1))
    gate.set()
    assert first_asked.wait(30)  # (a wait from here before it would be the first to look)
    error = waiting[0].exception(timeout=30)
    assert isinstance(error, mp.ShutdownError)
    assert asked == [error]
    assert first.exception(timeout=30) is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process"])
def test_cancelling_a_call_waiting_to_retry_gives_back_no_trial_permit(backend: str, clock: FakeClock, gate: threading.Event) -> None:
    # Its failed attempt's outcome was recorded, so it held no permit; its cancel gave back
    # the running trial's, and another call was let through beside the breaker's one trial.
    breaker = breaker_for(clock, min_calls=2, window=2, half_open_calls=1)
    retrying = mp.parallel(
        backend=backend,
        circuit_breaker=breaker,
        retry=mp.Retry(on=ConnectionError, attempts=5, timeout=None, wait_initial=1000, wait_max=1000, wait_jitter=0),
    )(raises_connection_error)
    waiting = [retrying() for _ in range(2)]
    assert all(wait_until(lambda h=h: h.status == "waiting to retry", 30) for h in waiting)
    assert breaker.state == "open"
    clock.now += 31
    trial = mp.parallel(circuit_breaker=breaker)(gate.wait)(30)  # the one trial, held running
    assert breaker.state == "half_open" and not trial.done()
    for handle in waiting:
        assert handle.cancel()
    refused = mp.parallel(circuit_breaker=breaker)(abs)(-1)
    assert isinstance(refused.exception(timeout=30), mp.CircuitOpenError)
    gate.set()
    assert trial.get(timeout=30) is True
    assert breaker.state == "closed"


@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_a_retry_that_finds_the_breaker_open_is_refused_on_every_backend(clock: FakeClock, backend: str) -> None:
    # On sync, the next attempt ran without asking the breaker that the first had opened.
    breaker = breaker_for(clock, min_calls=1)
    calls = []

    @mp.parallel(backend=backend, circuit_breaker=breaker, retry=mp.Retry(on=ConnectionError, attempts=4))
    def down() -> str:
        calls.append(1)
        raise ConnectionError("payments down")

    with no_retry_waits():
        assert outcome(down()) == "CircuitOpenError"
    assert len(calls) == 1
    assert breaker.state is mp.CircuitState.OPEN


def test_a_sync_call_refused_at_first_and_retried_runs_once_the_breaker_recovers(clock: FakeClock) -> None:
    # Its retry went to the deadline thread, which took the half-open trial and then
    # gave up: the breaker stayed half-open, refusing every call, for good.
    breaker = breaker_for(clock, min_calls=1, half_open_calls=1)
    guarded(breaker)(True).exception(timeout=30)  # opens it
    assert breaker.state is mp.CircuitState.OPEN

    def recover_meanwhile(event: mp.TaskEvent) -> None:
        if event.kind == "retry":
            clock.now += 31  # the recovery time passes during the retry's wait

    retry = mp.Retry(on=mp.CircuitOpenError, attempts=3)
    mp.add_task_listener(recover_meanwhile)
    try:
        with no_retry_waits():
            handle = guarded(breaker, retry=retry)(False)
    finally:
        mp.remove_task_listener(recover_meanwhile)
    assert handle.get(timeout=0) == "paid"
    assert handle.attempts == 2
    assert breaker.state is mp.CircuitState.CLOSED


def wait_then(gate: threading.Event, fail: bool) -> str:
    assert gate.wait(30)
    if fail:
        raise ConnectionError("payments down")
    return "paid"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("late_fails", [False, True], ids=["late success", "late failure"])
def test_a_call_admitted_before_the_breaker_opened_is_no_trial_when_it_ends(
    late_fails: bool, clock: FakeClock, gate: threading.Event
) -> None:
    # Ending while the breaker was half-open, it counted as a trial: its success
    # closed the breaker after a single real trial, its failure opened it again.
    resize(4)
    breaker = breaker_for(clock, min_calls=2, window=2, half_open_calls=2)
    fn = mp.parallel(backend="thread", circuit_breaker=breaker)(wait_then)
    late = fn(gate, late_fails)  # admitted while closed, held running
    failing = mp.parallel(backend="sync", circuit_breaker=breaker)(raises_connection_error)
    assert [outcome(failing()) for _ in range(2)] == ["ConnectionError"] * 2
    assert breaker.state == "open"
    clock.now += 31
    trial_gate = threading.Event()
    trial = fn(trial_gate, False)  # the first of two trials, held running
    assert breaker.state == "half_open"
    gate.set()
    assert outcome(late) == ("ConnectionError" if late_fails else "ok")
    trial_gate.set()
    assert trial.get(timeout=30) == "paid"
    assert breaker.state == "half_open"  # one trial of two succeeded
    assert fn(trial_gate, False).get(timeout=30) == "paid"
    assert breaker.state == "closed"
    assert breaker.statistics().successful_calls == 3 - late_fails  # counted all the same


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["cancel", "cancel in bulk"])
def test_cancelling_a_call_admitted_before_the_breaker_opened_gives_back_no_trial_permit(
    how: str, clock: FakeClock, gate: threading.Event
) -> None:
    # Its cancel gave back the trial permit of the round under way, and another
    # call was let through beside the breaker's one trial.
    from makeparallel._handle import cancel_all

    resize(2)
    breaker = breaker_for(clock, min_calls=2, window=2, half_open_calls=1)
    holders = [mp.parallel(backend="thread")(gate.wait)(30) for _ in range(2)]  # both workers
    fn = mp.parallel(backend="thread", circuit_breaker=breaker)(wait_then)
    stale = [fn(gate, False) for _ in range(1 if how == "cancel" else 3)]  # admitted while closed, queued
    failing = mp.parallel(backend="sync", circuit_breaker=breaker)(raises_connection_error)
    assert [outcome(failing()) for _ in range(2)] == ["ConnectionError"] * 2
    clock.now += 31
    trial = fn(gate, False)  # the one trial, queued behind the rest
    assert breaker.state == "half_open"
    if how == "cancel":
        assert stale[0].cancel()
    else:
        assert cancel_all(stale) == len(stale)
    refused = mp.parallel(backend="sync", circuit_breaker=breaker)(abs)(-1)
    assert outcome(refused) == "CircuitOpenError"
    gate.set()
    assert trial.get(timeout=30) == "paid" and all(holder.get(timeout=30) for holder in holders)
    assert breaker.state == "closed"


def doubled(x: int) -> int:
    return 2 * x


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync", "process"])
def test_a_call_refused_at_first_and_retried_runs_on_every_backend(backend: str, clock: FakeClock) -> None:
    # On processes it was accepted unpickled: its retry killed the pool's loop
    # thread (no payload), and the task and every later one never ended.
    breaker = breaker_for(clock)
    breaker.force_open()
    fn = mp.parallel(backend=backend, circuit_breaker=breaker, retry=mp.Retry(on=mp.CircuitOpenError, attempts=3))(doubled)

    def recover_meanwhile(event: mp.TaskEvent) -> None:
        if event.kind == "retry" and event.name == "doubled":
            breaker.reset()

    mp.add_task_listener(recover_meanwhile)
    try:
        with no_retry_waits():
            handle = fn(21)
            assert handle.get(timeout=30) == 42
    finally:
        mp.remove_task_listener(recover_meanwhile)
    assert handle.attempts == 2  # the refused one, then the one that ran
    assert fn(1).get(timeout=30) == 2


class CancelsAtAdmission(mp.CircuitBreaker):
    """A breaker that, admitting a retry of ``target``, sees it cancelled before the retry is queued."""

    target: mp.AsyncHandle[Any] | None = None

    def admit(self) -> int | mp.CircuitOpenError:
        permit = super().admit()
        target = self.target
        if isinstance(permit, int) and target is not None and target.status == "waiting to retry":
            self.target = None
            target.cancel()
        return permit


@pytest.mark.timeout(60)
def test_a_retry_cancelled_as_the_breaker_admits_it_gives_back_its_trial_permit(clock: FakeClock) -> None:
    # The permit went back through the breaker's old release(), which no longer
    # exists: the deadline thread raised, and the trial permit was lost for good.
    breaker = CancelsAtAdmission("payments", window=1, min_calls=1, recovery_timeout=30.0, half_open_calls=1, clock=clock)
    retry = mp.Retry(on=(ConnectionError, mp.CircuitOpenError), attempts=20, wait_initial=0.01, wait_jitter=0, timeout=None)
    armed = threading.Event()

    @mp.parallel(backend="thread", circuit_breaker=breaker, retry=retry)
    def fn() -> None:
        assert armed.wait(30)  # once the breaker knows which task to cancel
        raise ConnectionError("down")

    def recover_at_the_first_retry(event: mp.TaskEvent) -> None:
        if event.kind == "retry" and event.task_id == handle.get_task_id():
            clock.now = max(clock.now, 1000.0 + 31)  # the next attempt is the half-open trial

    mp.add_task_listener(recover_at_the_first_retry)
    try:
        handle = fn()
        breaker.target = handle
        armed.set()
        with pytest.raises(mp.TaskCancelledError):
            handle.get(timeout=30)
    finally:
        mp.remove_task_listener(recover_at_the_first_retry)
    assert breaker.state == "half_open"
    assert mp.parallel(backend="sync", circuit_breaker=breaker)(abs)(-1).get(timeout=30) == 1  # the trial permit is back
    assert breaker.state == "closed"


class SaysWhenAdmitted(mp.CircuitBreaker):
    """A breaker that sets ``admitted`` once it admitted a call from a thread other than the main one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.admitted = threading.Event()

    def admit(self) -> int | mp.CircuitOpenError:
        permit = super().admit()
        if threading.current_thread() is not threading.main_thread():
            self.admitted.set()
        return permit


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fails", [False, True], ids=["succeeds", "fails"])
def test_a_call_admitted_while_closed_that_waits_for_its_slot_is_no_trial(
    fails: bool, clock: FakeClock, gate: threading.Event
) -> None:
    # Its permit's round was read as its backend accepted it, after its wait for
    # a max_concurrent slot: the breaker had half-opened meanwhile, and the call
    # counted as a trial, closing the breaker (or opening it) as the trial ran.
    resize(4)
    breaker = SaysWhenAdmitted("payments", window=1, min_calls=1, recovery_timeout=30.0, half_open_calls=1, clock=clock)
    limited = mp.parallel(backend="thread", circuit_breaker=breaker, max_concurrent=1)(wait_then)
    holder = limited(gate, False)  # holds the one slot
    done = threading.Event()
    done.set()
    waiting: list[mp.AsyncHandle[str]] = []
    caller = threading.Thread(target=lambda: waiting.append(limited(done, fails)))
    caller.start()
    assert breaker.admitted.wait(30)  # admitted while closed; now it waits for the slot
    assert outcome(mp.parallel(backend="sync", circuit_breaker=breaker)(raises_connection_error)()) == "ConnectionError"
    clock.now += 31
    trial_gate = threading.Event()
    trial = mp.parallel(backend="thread", circuit_breaker=breaker)(wait_then)(trial_gate, False)
    assert breaker.state == "half_open"
    gate.set()  # the holder ends, and the waiting call takes the slot
    caller.join(30)
    assert holder.get(timeout=30) == "paid" and outcome(waiting[0]) == ("ConnectionError" if fails else "ok")
    assert breaker.state == "half_open"  # the trial still runs
    trial_gate.set()
    assert trial.get(timeout=30) == "paid"
    assert breaker.state == "closed"


@pytest.mark.timeout(60)
def test_a_call_that_raises_out_of_its_own_submission_gives_back_no_permit_twice(
    clock: FakeClock, gate: threading.Event
) -> None:
    # A sync task raising SystemExit ends (its trial permit given back: such an
    # ending counts as nothing), then raises out of the call: the call gave its
    # permit back again, and a fourth trial went through a half-open round of two.
    resize(2)
    breaker = breaker_for(clock, window=1, min_calls=1, half_open_calls=2)

    def leave() -> None:
        raise SystemExit(3)

    assert outcome(mp.parallel(backend="sync", circuit_breaker=breaker)(raises_connection_error)()) == "ConnectionError"
    clock.now += 31
    first_trial = mp.parallel(backend="thread", circuit_breaker=breaker)(gate.wait)(30)
    with pytest.raises(SystemExit):
        mp.parallel(backend="sync", circuit_breaker=breaker)(leave)()  # the second trial, which gives its place back
    assert outcome(mp.parallel(backend="sync", circuit_breaker=breaker)(abs)(-1)) == "ok"  # the second trial
    assert outcome(mp.parallel(backend="sync", circuit_breaker=breaker)(abs)(-1)) == "CircuitOpenError"
    gate.set()
    assert first_trial.get(timeout=30) is True
    assert breaker.state == "closed"


@pytest.mark.parametrize(("rate", "calls", "failing"), [(0.28, 25, 7), (0.14, 50, 7), (0.56, 25, 14), (0.07, 100, 7)])
def test_it_opens_when_the_failure_rate_equals_the_threshold_exactly(clock: FakeClock, rate: float, calls: int, failing: int) -> None:
    # failing / calls == rate, but failing >= rate * calls is False in floats (7 >= 7.000000000000001).
    breaker = breaker_for(clock, failure_rate=rate, window=calls, min_calls=calls)
    pay = guarded(breaker)
    for i in range(calls):
        pay(i < failing)
    assert breaker.statistics().failure_rate == rate
    assert breaker.state == "open"


@pytest.mark.parametrize(("rate", "calls", "slow"), [(0.28, 25, 7), (0.56, 25, 14)])
def test_it_opens_when_the_slow_call_rate_equals_the_threshold_exactly(clock: FakeClock, rate: float, calls: int, slow: int) -> None:
    breaker = breaker_for(clock, failure_rate=1.0, window=calls, min_calls=calls, slow_call_seconds=0.5, slow_call_rate=rate)
    for i in range(calls):  # outcomes of calls admitted in its first round, as the engine records them
        breaker.record(False, 1.0 if i < slow else 0.0, 0)
    assert breaker.statistics().slow_call_rate == rate
    assert breaker.state == "open"


@pytest.mark.timeout(60)
def test_a_listener_told_of_a_half_open_breaker_by_a_retry_holds_back_no_timeout(clock: FakeClock) -> None:
    # The retry's next attempt is admitted on the deadline thread; its listeners
    # ran there, and while one ran no task's timeout fired.
    breaker = breaker_for(clock, window=1, min_calls=1, recovery_timeout=30.0, half_open_calls=1)
    told, release = threading.Event(), threading.Event()
    threads: list[str] = []

    def slow_listener(event: mp.TaskEvent) -> None:
        if event.kind == "circuit" and event.new_state == "half_open":
            threads.append(threading.current_thread().name)
            told.set()
            release.wait(30)

    flaky = fails_once_then_recovers(breaker, attempts=50)

    def recover_at_the_first_retry(event: mp.TaskEvent) -> None:
        if event.kind == "retry" and event.attempt == 1:
            clock.now += 31  # a retry admitted from now on half-opens it (one refused before is retried)

    @mp.parallel(backend="thread", timeout=0.05)
    def spins() -> None:
        while True:
            mp.check_cancelled()
            release.wait(0.01)

    mp.add_task_listener(slow_listener)
    mp.add_task_listener(recover_at_the_first_retry)
    try:
        handle = flaky()
        assert told.wait(30)
        timed = spins()
        assert timed.wait(20) and timed.status == "timed out"  # while the listener still runs
    finally:
        release.set()
        mp.remove_task_listener(slow_listener)
        mp.remove_task_listener(recover_at_the_first_retry)
    assert handle.get(timeout=30) == "ok"
    assert threads != ["makeparallel-deadlines"]


@pytest.mark.timeout(60)
def test_a_retry_half_opening_a_breaker_where_no_thread_starts_still_runs(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The announcement's thread could not start (the process limit counts
    # threads): admit() raised after taking the trial permit, the retry never
    # ran, and the breaker refused every call after it for good.
    breaker = breaker_for(clock, window=1, min_calls=1, recovery_timeout=30.0, half_open_calls=1)
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name == "makeparallel-circuit-event":
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    told: list[str] = []

    def listener(event: mp.TaskEvent) -> None:
        if event.kind == "circuit":
            told.append(event.new_state)
        if event.kind == "retry" and event.attempt == 1:
            clock.now += 31  # the retry's next attempt half-opens it, on the deadline thread

    flaky = fails_once_then_recovers(breaker, attempts=5)

    mp.add_task_listener(listener)
    try:
        assert flaky().get(timeout=10) == "ok"
    finally:
        mp.remove_task_listener(listener)
    assert breaker.state == "closed"
    assert "half_open" in told


def test_a_worker_opening_a_breaker_where_no_thread_starts_goes_on(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The change is told from a thread of its own, started under the pool's
    # lock by the worker that ended the task: where none could start, the
    # RuntimeError killed that worker.
    breaker = breaker_for(clock, window=1, min_calls=1)
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name == "makeparallel-circuit-event":
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    resize(1)
    listener: Callable[[mp.TaskEvent], None] = lambda event: None
    mp.add_task_listener(listener)
    try:
        with caplog.at_level("WARNING", logger="makeparallel"):
            handle = guarded(breaker, backend="thread")(True)
            assert isinstance(handle.exception(timeout=10), ConnectionError)  # it opens
    finally:
        mp.remove_task_listener(listener)
    assert breaker.state == "open"
    assert mp.get_thread_pool_info()["dead_threads"] == 0
    assert any("no thread could start to tell listeners" in record.getMessage() for record in caplog.records)
    assert mp.parallel(lambda: "still running")().get(timeout=10) == "still running"


def refused_by_another_breaker() -> str:
    """A task whose own code is refused by the breaker of a dependency it calls (one that is open)."""
    raise mp.CircuitOpenError("circuit breaker 'db' is open", breaker="db", failure_rate=1.0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync", "process"])
@pytest.mark.parametrize(
    "retry",
    [None, mp.Retry(on=mp.CircuitOpenError, attempts=2, wait_initial=0, wait_jitter=0)],
    ids=["no retry", "retried"],
)
def test_a_trial_that_a_nested_breaker_refuses_is_a_failure_and_keeps_no_permit(
    backend: str, retry: mp.Retry | None, clock: FakeClock
) -> None:
    # Taken for this breaker's own refusal (the task never ran), such an
    # outcome was never recorded and its trial permit never given back: the
    # breaker stayed half-open for good, refusing every call.
    breaker = breaker_for(clock, window=1, min_calls=1, half_open_calls=1)
    assert outcome(guarded(breaker)(True)) == "ConnectionError"  # it opens
    clock.now += 31
    handler = mp.parallel(backend=backend, circuit_breaker=breaker, retry=retry)(refused_by_another_breaker)
    handle = handler()
    error = handle.exception(timeout=30)
    assert isinstance(error, mp.CircuitOpenError)
    # The trial failed and opened it again: it refuses the retry, if any.
    assert (error.breaker, handle.attempts) == (("db", 1) if retry is None else ("payments", 2))
    assert breaker.state == "open" and breaker.statistics().failed_calls == 2
    clock.now += 31
    assert outcome(guarded(breaker)(False)) == "ok"  # the next trial closes it
    assert breaker.state == "closed"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_a_nested_refusal_counts_by_on_as_any_error(backend: str, clock: FakeClock) -> None:
    breaker = breaker_for(clock, window=1, min_calls=1, half_open_calls=1, on=ConnectionError)
    assert outcome(guarded(breaker)(True)) == "ConnectionError"
    clock.now += 31
    assert outcome(mp.parallel(backend=backend, circuit_breaker=breaker)(refused_by_another_breaker)()) == "CircuitOpenError"
    assert breaker.state == "closed" and breaker.statistics().successful_calls == 1  # the dependency answered


@pytest.mark.parametrize("on", NEVER_APPLIES, ids=repr)
def test_a_breaker_on_what_is_never_counted_is_refused(on: Any) -> None:
    # Accepted silently, such a breaker counted nothing as a failure, and never opened.
    never = next(kind for kind in (on if isinstance(on, tuple) else (on,)) if kind is not ConnectionError)
    with pytest.raises(ValueError, match=rf"on names {never.__name__}, .* counts? as nothing.*Name the errors"):
        mp.CircuitBreaker("dependency", on=on)


@pytest.mark.parametrize("on", CAN_APPLY, ids=repr)
def test_a_breaker_on_what_can_be_counted_is_accepted(on: Any) -> None:
    assert mp.CircuitBreaker("dependency", on=on).on is on


class _StoppedHere(mp.ShutdownError):
    pass


@pytest.mark.parametrize("on", [mp.ShutdownError, _StoppedHere, (ConnectionError, mp.ShutdownError)], ids=repr)
def test_a_breaker_on_shutdown_error_is_refused(on: Any) -> None:
    # A ShutdownError counts as nothing (a shutdown stopped the call): named in `on`, it was
    # accepted, and the breaker silently never opened on it. A retry may still name it.
    never = next(kind for kind in (on if isinstance(on, tuple) else (on,)) if kind is not ConnectionError)
    with pytest.raises(ValueError, match=rf"on names {never.__name__}, .* counts? as nothing.*Name the errors"):
        mp.CircuitBreaker("dependency", on=on)
    assert mp.Retry(on=on).on is on
    assert mp.CircuitBreaker("dependency", on=mp.TaskError).on is mp.TaskError  # a base of it: other errors count


# A handler that logs a breaker, or resets it, on SIGUSR1, as the code it interrupted was inside
# the locked section of the breaker named in argv (a guarded call's admission or outcome).
BREAKER_IN_A_HANDLER = """
import faulthandler, signal, sys
import makeparallel as mp

faulthandler.dump_traceback_later(20, exit=True)  # a hang names the call
breaker = mp.CircuitBreaker("dependency", window=5, min_calls=5)
other = mp.CircuitBreaker("other")
assert mp.parallel(backend="sync", circuit_breaker=breaker)(abs)(-1).get() == 1
lock = {"its own": breaker, "another breaker's": other}[sys.argv[1]]._lock
""" + REFUSED_OR_OK + """

calls = {
    "state": lambda: breaker.state,
    "repr": lambda: repr(breaker),
    "statistics": breaker.statistics,
    "reset": breaker.reset,
    "force_open": breaker.force_open,
}
""" + CALLS_UNDER_THE_LOCK + """
print(breaker.state.value, breaker.statistics().successful_calls, flush=True)
print(*(f"{name}={outcome(call)}" for name, call in calls.items()), flush=True)
"""
_BREAKER_CALLS_OK = "state=ok repr=ok statistics=ok reset=ok force_open=ok"


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 here")
@pytest.mark.parametrize(
    ("held", "outcomes", "after"),
    [
        ("its own", "state=ok repr=ok statistics=RuntimeError reset=RuntimeError force_open=RuntimeError", "closed 1"),
        ("another breaker's", _BREAKER_CALLS_OK, "open 0"),
    ],
)
def test_a_breaker_read_or_reset_in_a_signal_handler_never_waits_for_its_lock_held_below(
    held: str, outcomes: str, after: str
) -> None:
    # statistics(), reset() and force_open() from a signal handler that interrupted the main
    # thread inside the breaker's locked section took the lock and waited for good: the
    # service hung. Refused, reset() and force_open() change nothing (still closed, one call
    # counted); out of the handler, each works. state and repr take no lock.
    result = subprocess.run(
        [sys.executable, "-c", BREAKER_IN_A_HANDLER, held], capture_output=True, text=True, timeout=50, check=False
    )
    assert (result.returncode, result.stdout) == (0, f"{outcomes}\n{after}\n{_BREAKER_CALLS_OK}\n"), result.stderr


def runs_until_stopped(folder: str) -> None:
    """A process task that says it started (a file in ``folder``), then runs until shutdown() stops its worker."""
    with open(os.path.join(folder, str(os.getpid())), "w"):
        pass
    time.sleep(60)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("which", ["running", "queued"])
def test_calls_that_shutdown_stopped_count_as_nothing_for_their_breaker(
    which: str, tmp_path: Any, clock: FakeClock
) -> None:
    # Stopped by shutdown(), running or not yet started, a process task fails with
    # ShutdownError, which the breaker counted as a failure of the dependency: a
    # shutdown opened it (the dependency never answered, the queued call never ran),
    # and after reset_shutdown() every call was refused for its recovery_timeout.
    mp.configure_process_pool(num_workers=1)  # (put back after each test)
    breaker = breaker_for(clock, window=1, min_calls=1)
    call = mp.parallel(backend="process", circuit_breaker=breaker)(runs_until_stopped)
    handles = {"running": call(str(tmp_path)), "queued": call(str(tmp_path))}
    assert wait_until(lambda: any(tmp_path.iterdir()), 30)
    assert mp.shutdown(timeout_secs=0.1) is False
    assert isinstance(handles[which].exception(timeout=30), mp.ShutdownError)
    stats = breaker.statistics()
    assert (stats.state, stats.failed_calls, stats.successful_calls, stats.buffered_calls) == ("closed", 0, 0, 0)


@pytest.mark.timeout(60)
def test_an_attempt_that_a_shutdown_error_ended_gives_back_its_trial_permit_for_its_retry(clock: FakeClock) -> None:
    # Retried, an attempt that ended with ShutdownError (its code called into a pool
    # that was shut down) was recorded as a failed trial: the breaker opened again,
    # and refused the retry.
    breaker = breaker_for(clock, window=1, min_calls=1, half_open_calls=1)
    assert outcome(guarded(breaker)(True)) == "ConnectionError"
    clock.now += 31
    attempts: list[int] = []

    @mp.parallel(backend="thread", circuit_breaker=breaker, retry=mp.Retry(on=mp.ShutdownError, attempts=2, wait_initial=0, wait_jitter=0))
    def calls_a_closed_pool() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise mp.ShutdownError("the pool it called was shut down")
        return "paid"

    handle = calls_a_closed_pool()
    assert handle.get(timeout=30) == "paid" and handle.attempts == 2
    stats = breaker.statistics()
    assert (stats.state, stats.failed_calls, stats.successful_calls) == ("closed", 1, 1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("opened_by", ["a task's failure", "force_open() on another thread"])
@pytest.mark.parametrize("then", ["a trial closes it", "reset()"])
def test_a_slow_listener_hears_one_breakers_changes_in_the_order_they_happened(
    opened_by: str, then: str, clock: FakeClock
) -> None:
    # Each change was told on its own thread (a short-lived one, or the caller's): while
    # a listener was slow on "open", the changes after it reached it first, and a
    # dashboard keeping the latest state it was told said open with the breaker closed.
    breaker = breaker_for(clock, window=1, min_calls=1, half_open_calls=1)
    pay = guarded(breaker, backend="thread")
    told: list[tuple[str, str]] = []
    told_lock = threading.Lock()
    in_open, release, all_told = threading.Event(), threading.Event(), threading.Event()
    expected = [("closed", "open")]
    if opened_by != "a task's failure" and then == "a trial closes it":  # reset, then a task's failure opens it
        expected += [("open", "closed"), ("closed", "open")]
    expected += [("open", "half_open"), ("half_open", "closed")] if then == "a trial closes it" else [("open", "closed")]

    def dashboard(event: mp.TaskEvent) -> None:
        if event.kind != "circuit" or event.breaker != "payments":
            return
        if event.new_state == "open":
            in_open.set()
            release.wait(30)  # slow on "open"
        with told_lock:
            told.append((event.old_state, event.new_state))  # type: ignore[arg-type]
            if len(told) == len(expected):
                all_told.set()

    mp.add_task_listener(dashboard)
    opener: threading.Thread | None = None
    try:
        if opened_by == "a task's failure":
            assert outcome(pay(True)) == "ConnectionError"
        else:
            opener = threading.Thread(target=breaker.force_open, name="opener")
            opener.start()
        assert in_open.wait(30)
        # The listener holds "open": the breaker goes on, and its callers are not held.
        if then == "a trial closes it":
            if opened_by != "a task's failure":
                breaker.reset()
                assert outcome(pay(True)) == "ConnectionError"
            clock.now += 31
            assert outcome(pay(False)) == "ok"
        else:
            breaker.reset()
        assert breaker.state == "closed"
        release.set()
        assert all_told.wait(30)
    finally:
        release.set()
        mp.remove_task_listener(dashboard)
        if opener is not None:
            opener.join(30)
    assert told == expected
    assert told[-1][1] == breaker.state == "closed"


SLOW, FAST = 2.0, 0.1  # seconds a trial ran, against slow_call_seconds=1.0


@pytest.mark.parametrize(
    ("half_open_calls", "slow_call_rate", "trials", "after"),
    [
        (2, 1.0, [SLOW, FAST], "closed"),  # 50% slow, under 100%
        (2, 1.0, [FAST, SLOW], "closed"),
        (3, 0.5, [SLOW, FAST, FAST], "closed"),  # 33%, under 50%
        (2, 0.5, [SLOW, FAST], "open"),  # 50% reaches 50%
        (2, 1.0, [SLOW, SLOW], "open"),
        (1, 1.0, [SLOW], "open"),
    ],
)
def test_a_slow_trial_that_succeeded_reopens_it_only_where_the_trials_slow_call_rate_reaches_its_threshold(
    half_open_calls: int, slow_call_rate: float, trials: list[float], after: str, clock: FakeClock
) -> None:
    # Any slow trial opened the breaker again, as a failed one does: a slow_call_rate of
    # 100% over two trials was met by one slow call of two, and a dependency that answered
    # every trial was refused for another recovery_timeout. Half-open, the rates are the
    # trials' (as resilience4j computes them), judged once all are in.
    breaker = breaker_for(
        clock, half_open_calls=half_open_calls, slow_call_seconds=1.0, slow_call_rate=slow_call_rate
    )
    for _ in range(4):
        breaker.record(True, FAST, breaker.admit())  # type: ignore[arg-type]
    assert breaker.state == "open"
    clock.now += 31
    permits = [breaker.admit() for _ in trials]
    assert all(isinstance(permit, int) for permit in permits) and breaker.state == "half_open"
    for permit, seconds in zip(permits[:-1], trials[:-1]):
        breaker.record(False, seconds, permit)  # type: ignore[arg-type]
        assert breaker.state == "half_open"  # a success, slow or not: the trials are not all in
    breaker.record(False, trials[-1], permits[-1])  # type: ignore[arg-type]
    stats = breaker.statistics()
    assert (stats.state, stats.failed_calls, stats.successful_calls, stats.slow_calls) == (
        after, 4, len(trials), trials.count(SLOW)
    )
    if after == "open":
        assert stats.slow_call_rate == trials.count(SLOW) / len(trials)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["sync", "thread"])
def test_a_ctrl_c_in_a_listener_told_as_a_call_turns_it_half_open_gives_back_that_calls_trial_permit(
    backend: str, clock: FakeClock
) -> None:
    # The change a submission makes (open to half-open) is told on the caller's thread,
    # after its trial permit was taken. A Ctrl-C there (a listener running on the main
    # thread) came out of the call with no handle, the permit kept: the breaker stayed
    # half-open, its trials taken by no call, and refused every call until reset().
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("a SIGINT raises KeyboardInterrupt on the main thread only")
    breaker = breaker_for(clock, window=1, min_calls=1, half_open_calls=1)
    pay = guarded(breaker, backend=backend)
    assert outcome(pay(True)) == "ConnectionError" and breaker.state == "open"
    interrupted: list[str] = []

    def dashboard(event: mp.TaskEvent) -> None:
        if event.kind == "circuit" and event.new_state == "half_open" and not interrupted:
            interrupted.append(threading.current_thread().name)
            signal.raise_signal(signal.SIGINT)  # a real Ctrl-C, handled on this thread

    clock.now += 31
    mp.add_task_listener(dashboard)
    try:
        with pytest.raises(KeyboardInterrupt):
            pay(False)
    finally:
        mp.remove_task_listener(dashboard)
    assert interrupted == ["MainThread"] and breaker.state == "half_open"
    assert len(pay.runs) == 1  # type: ignore[attr-defined]  # the interrupted call never ran
    assert outcome(pay(False)) == "ok"  # the trial it would have been
    assert breaker.state == "closed"
