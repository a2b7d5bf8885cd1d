"""Counts, seconds, rates and sizes given as NumPy scalars (or any integral or real type).

``numpy.int64`` subclasses no ``int`` and ``numpy.float32`` no ``float``, yet
every NumPy user computes such values (``arr.sum() // 8``, ``np.ceil(...)``):
each entry point takes them as the numbers they are, keeps a plain ``int`` or
``float``, and still refuses a ``bool`` or a count that is not integral.
"""

from __future__ import annotations

import concurrent.futures
import operator
import threading
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy
import pytest

import makeparallel as mp
from makeparallel import _runtime
from makeparallel._backends._thread import check_stack_size
from makeparallel._byte_sizes import parse_byte_size
from makeparallel._validation import (
    as_integer,
    check_count,
    check_wait_timeout,
    is_real,
)


class Index:
    """An integer type of its own: ``__index__`` only, as ``operator.index`` asks."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"Index({self.value})"


def double(x: int) -> int:
    return 2 * x


def _executor_map(chunksize: Any = 1, buffersize: Any = None) -> list[int]:
    with mp.Executor(max_workers=2) as executor:
        return list(executor.map(double, range(7), chunksize=chunksize, buffersize=buffersize))


def _with_thread_pool(num_threads: Any) -> int:
    mp.configure_thread_pool(num_threads)  # the conftest puts the size back
    return mp.parallel(double)(3).get(timeout=30)


def _executor_workers(max_workers: Any) -> int:
    executor = mp.Executor(max_workers=max_workers)
    try:
        return executor._max_workers
    finally:
        executor.shutdown()


def _group_limit(max_concurrent: Any) -> list[int]:
    with mp.ParallelContext(max_concurrent=max_concurrent) as group:
        handles = [group.submit(double, i) for i in range(3)]
    return [handle.get() for handle in handles]


def _global_limit(limit: Any) -> int | None:
    mp.set_max_concurrent_tasks(limit)  # the conftest removes it
    return _runtime.global_limiter.limit


# (entry point, the call given the value, what it gives back, as plain numbers)
COUNTS: list[tuple[str, Callable[[Any], Any], Any]] = [
    ("parallel_map chunksize", lambda n: mp.parallel_map(double, range(7), chunksize=n), [0, 2, 4, 6, 8, 10, 12]),
    ("parallel_map max_in_flight", lambda n: mp.parallel_map(double, range(5), max_in_flight=n), [0, 2, 4, 6, 8]),
    ("imap chunksize", lambda n: list(mp.imap(double, range(5), chunksize=n)), [0, 2, 4, 6, 8]),
    ("Executor max_workers", _executor_workers, 2),
    ("Executor.map chunksize", lambda n: _executor_map(chunksize=n), [0, 2, 4, 6, 8, 10, 12]),
    ("Executor.map buffersize", lambda n: _executor_map(buffersize=n), [0, 2, 4, 6, 8, 10, 12]),
    ("configure_thread_pool", _with_thread_pool, 6),
    ("set_max_concurrent_tasks", _global_limit, 2),
    ("ParallelContext max_concurrent", _group_limit, [0, 2, 4]),
    ("parallel max_concurrent", lambda n: mp.parallel(double, max_concurrent=n)(4).get(timeout=30), 8),
    ("parallel priority", lambda n: mp.parallel(double, priority=n)(4).get(timeout=30), 8),
    ("Retry attempts", lambda n: mp.Retry(on=ValueError, attempts=n).attempts, 2),
    ("retry max_retries", lambda n: mp.retry(max_retries=n)(double)(4), 8),
    ("retry_backoff max_attempts", lambda n: mp.retry_backoff(max_attempts=n)(double)(4), 8),
    ("CircuitBreaker window", lambda n: mp.CircuitBreaker("numbers", window=n, min_calls=n, half_open_calls=n).window, 2),
    ("health queue_limit", lambda n: isinstance(mp.health(queue_limit=n)["status"], str), True),
]


@pytest.mark.parametrize(
    "make", [numpy.int64, numpy.uint8, numpy.array, Index], ids=["numpy.int64", "numpy.uint8", "numpy 0-d array", "__index__"]
)
@pytest.mark.parametrize(("call", "expected"), [row[1:] for row in COUNTS], ids=[row[0] for row in COUNTS])
def test_a_count_of_any_integer_type_is_taken(call: Callable[[Any], Any], expected: Any, make: type) -> None:
    result = call(make(2))
    assert result == expected
    assert type(result) is type(expected)  # a plain int, not the caller's type, where the count comes back


@pytest.mark.parametrize(
    "value",
    [True, numpy.True_, 2.0, numpy.float64(2.0), "2", numpy.array(2.0), numpy.array(True), numpy.array([2])],
    ids=["bool", "numpy.bool", "float", "numpy.float64", "str", "numpy 0-d float array", "numpy 0-d bool array", "numpy 1-d array"],
)
@pytest.mark.parametrize(
    "call",
    [
        lambda n: mp.parallel_map(double, range(3), chunksize=n),
        lambda n: mp.Executor(max_workers=n),
        lambda n: mp.configure_thread_pool(n),
        lambda n: mp.Retry(on=ValueError, attempts=n),
    ],
    ids=["parallel_map chunksize", "Executor max_workers", "configure_thread_pool", "Retry attempts"],
)
def test_a_count_that_is_not_an_integer_is_refused_as_before(call: Callable[[Any], Any], value: Any) -> None:
    with pytest.raises(TypeError, match=r"must be an int >= 1,( \"auto\" or None,)? got "):
        call(value)


@pytest.mark.parametrize("make", [numpy.int64, Index], ids=["numpy.int64", "__index__"])
def test_a_count_below_one_of_any_integer_type_is_refused(make: type) -> None:
    with pytest.raises(ValueError, match=r"chunksize must be an int >= 1, got "):
        mp.parallel_map(double, range(3), chunksize=make(0))
    with pytest.raises(ValueError, match=r"max_workers must be an int >= 1, got "):
        mp.Executor(max_workers=make(-1))


def test_a_zero_limit_of_any_integer_type_removes_the_limit() -> None:
    mp.set_max_concurrent_tasks(2)
    mp.set_max_concurrent_tasks(numpy.int64(0))
    assert _runtime.global_limiter.limit is None
    with pytest.raises(TypeError, match=r"limit must be an int >= 1, or None or 0 for no limit, got 0.0"):
        mp.set_max_concurrent_tasks(0.0)


def test_check_count_gives_a_plain_int() -> None:
    assert type(check_count(numpy.int64(3), "n")) is int
    assert type(check_count(Index(3), "n")) is int
    assert as_integer(True) is None and as_integer(numpy.True_) is None and as_integer(3.0) is None
    assert operator.index(Index(5)) == as_integer(Index(5)) == 5


@pytest.mark.parametrize(
    "value",
    # Long enough for a loaded machine: each is also the wait for a task's result below.
    [numpy.int64(30), numpy.float32(30.0), numpy.float64(30.0), Fraction(61, 2), numpy.array(30), numpy.array(30.5, dtype=numpy.float32)],
    ids=["numpy.int64", "numpy.float32", "numpy.float64", "Fraction", "numpy 0-d int array", "numpy 0-d float array"],
)
def test_seconds_of_any_real_type_are_taken(value: Any) -> None:
    # A 0-d array is taken as its scalar, as a count takes an integer one (operator.index does).
    assert type(check_wait_timeout(value)) is float
    with mp.Executor(max_workers=1) as executor:
        future = executor.submit(double, 3)
        assert future.result(timeout=value) == 6 and future.exception(timeout=value) is None
        assert list(executor.map(double, range(3), timeout=value)) == [0, 2, 4]
    assert mp.parallel(double)(3).get(timeout=value) == 6
    assert mp.parallel(double, timeout=value)(3).get(timeout=30) == 6
    handle = mp.parallel(double)(3)
    assert handle.wait(value * 15)
    policy = mp.Retry(on=ValueError, timeout=value, wait_initial=value, wait_max=value, wait_exp_base=value)
    for name in ("timeout", "wait_initial", "wait_max", "wait_exp_base"):
        assert type(getattr(policy, name)) in (int, float)  # plain numbers: a NumPy power warns where a float's raises
    breaker = mp.CircuitBreaker("seconds", recovery_timeout=value, slow_call_seconds=value)
    assert type(breaker.recovery_timeout) is float


@pytest.mark.parametrize(
    "value", [numpy.float32(0.5), Fraction(1, 2), numpy.array(0.5)], ids=["numpy.float32", "Fraction", "numpy 0-d array"]
)
def test_rates_and_percentages_of_any_real_type_are_taken(value: Any) -> None:
    breaker = mp.CircuitBreaker("rates", failure_rate=value, slow_call_rate=value)
    assert breaker.failure_rate == 0.5 and type(breaker.failure_rate) is float
    assert isinstance(mp.health(memory_limit_percent=value * 200)["status"], str)


@pytest.mark.parametrize(
    "value",
    [True, numpy.True_, "1", None, numpy.array(True), numpy.array([1.0]), numpy.array(1 + 0j), numpy.array("1")],
    ids=["bool", "numpy.bool", "str", "None", "numpy 0-d bool array", "numpy 1-d array", "numpy 0-d complex array", "numpy 0-d str array"],
)
def test_seconds_that_are_not_a_number_are_refused_as_before(value: Any) -> None:
    assert not is_real(value)
    with pytest.raises(TypeError, match=r"timeout must be a number of seconds"):
        mp.parallel(double, timeout=value if value is not None else "x")


@pytest.mark.parametrize("make", [numpy.int64, Index], ids=["numpy.int64", "__index__"])
def test_a_byte_size_of_any_integer_type_is_taken(make: type) -> None:
    size = parse_byte_size(make(2**31), "max_worker_memory")
    assert size == 2**31 and type(size) is int
    with pytest.raises(TypeError, match=r"max_worker_memory must be a number of bytes \(an int\)"):
        parse_byte_size(numpy.float64(2.0**31), "max_worker_memory")
    stack_size = check_stack_size(make(1024 * 1024))  # (set in this process, it would stay for the suite)
    assert stack_size == 1024 * 1024 and type(stack_size) is int


def test_the_exporters_and_integrations_take_numpy_numbers() -> None:
    from makeparallel.statsd import StatsdExporter

    exporter = StatsdExporter(port=numpy.int64(8125), interval=numpy.float32(0.5))  # not started: no thread
    assert exporter._port == 8125 and type(exporter._port) is int  # a socket address takes no NumPy int
    with pytest.raises(TypeError, match=r"port must be an int from 1 to 65535, got np.float64\(8125.0\)"):
        StatsdExporter(port=numpy.float64(8125))
    fastapi = pytest.importorskip("makeparallel.fastapi")
    fastapi.lifespan(num_threads=numpy.int64(2), num_workers=numpy.int64(2), max_concurrent_tasks=numpy.int64(0))
    with pytest.raises(ValueError, match=r"max_concurrent_tasks must be an int >= 1, got np.int64\(-1\)"):
        fastapi.lifespan(max_concurrent_tasks=numpy.int64(-1))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["result", "exception"])
@pytest.mark.parametrize(
    "make", [numpy.float32, Fraction, numpy.int64], ids=["numpy.float32", "Fraction", "numpy.int64"]
)
@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_an_executor_futures_wait_takes_seconds_of_any_real_type(backend: str, make: type, method: str) -> None:
    # concurrent.futures hands the timeout to a lock, which takes an int or a float
    # only: a pending future's result(timeout=np.float32(5)) raised "'numpy.float32'
    # object cannot be interpreted as an integer", where the handle's get() took it.
    release = threading.Event()

    def held() -> str:
        release.wait(30)
        return "done"

    def times_out_inside_a_task(future: Any) -> bool:  # there the wait goes through the handle
        with pytest.raises(concurrent.futures.TimeoutError):  # (on 3.10 not the builtin one)
            getattr(future, method)(timeout=make(0))
        return True

    with mp.Executor(max_workers=2) as executor:
        future = executor.submit(held)
        try:
            with pytest.raises(concurrent.futures.TimeoutError):
                getattr(future, method)(timeout=make(0))
            # On a pool's worker; or inline (sync): in a task, not on a worker, the handle's blocking wait.
            assert mp.parallel(times_out_inside_a_task, backend=backend)(future).get(timeout=30)
        finally:
            release.set()
        outcome = getattr(future, method)(timeout=make(30))
    assert outcome == ("done" if method == "result" else None)
