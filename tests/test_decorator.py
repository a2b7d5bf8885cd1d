"""``@parallel``: forms, metadata, methods, options, call-time options and validation."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import math
import os
import select
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from unittest import mock

import pytest
from pool_helpers import default_runs_inline, poll_until_stopped

import makeparallel as mp
from makeparallel._decorators import own_parameters

BACKENDS = ["thread", "sync"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


# -- forms -----------------------------------------------------------------------------


def test_bare_decorator_returns_a_handle() -> None:
    @mp.parallel
    def double(x: int) -> int:
        return 2 * x

    handle = double(21)
    assert isinstance(handle, mp.AsyncHandle)
    assert handle.get(5) == 42
    assert isinstance(double, mp.ParallelFunction)


def test_decorator_with_empty_parentheses(backend: str) -> None:
    @mp.parallel()
    def double(x: int) -> int:
        return 2 * x

    assert double.options(backend=backend)(4).get(5) == 8


def test_decorator_with_options(backend: str) -> None:
    @mp.parallel(backend=backend, name="decorator-with-options", priority=3, timeout=30)
    def add(x: int, y: int = 0) -> int:
        return x + y

    handle = add(1, y=2)
    assert handle.get(5) == 3
    assert handle.name == "decorator-with-options"


def test_functional_form_with_options(backend: str) -> None:
    def triple(x: int) -> int:
        return 3 * x

    parallel_triple = mp.parallel(backend=backend)(triple)
    assert parallel_triple(3).get(5) == 9
    assert mp.parallel(triple).options(backend=backend)(2).get(5) == 6


def test_positional_and_keyword_arguments_reach_the_function(backend: str) -> None:
    @mp.parallel(backend=backend)
    def collect(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return args, kwargs

    assert collect(1, "two", three=3).get(5) == ((1, "two"), {"three": 3})


def test_sync_backend_runs_on_the_calling_thread() -> None:
    @mp.parallel(backend="sync")
    def where() -> int:
        return threading.get_ident()

    handle = where()
    assert handle.is_ready()  # it ran before the call returned
    assert handle.get() == threading.get_ident()


def test_thread_backend_runs_on_a_pool_thread(gate: threading.Event) -> None:
    ran_on: list[str] = []
    started = threading.Event()

    @mp.parallel(backend="thread")
    def where() -> None:
        ran_on.append(threading.current_thread().name)
        started.set()
        assert gate.wait(5)

    handle = where()
    assert started.wait(5)
    gate.set()
    handle.get(5)
    assert ran_on[0].startswith("makeparallel-")


# -- metadata --------------------------------------------------------------------------


def test_functools_metadata_is_kept() -> None:
    def original(x: int, *, scale: float = 1.0) -> float:
        """Scale a number."""
        return x * scale

    wrapped = mp.parallel(original)
    assert wrapped.__name__ == "original"
    assert wrapped.__qualname__ == original.__qualname__
    assert wrapped.__doc__ == "Scale a number."
    assert wrapped.__module__ == __name__
    assert wrapped.__wrapped__ is original
    assert inspect.signature(wrapped) == inspect.signature(original)


def test_wrapped_is_callable_directly() -> None:
    @mp.parallel
    def double(x: int) -> int:
        return 2 * x

    assert double.__wrapped__(5) == 10  # a plain value, no handle


def test_repr_names_the_function() -> None:
    @mp.parallel(name="repr-check")
    def work() -> None:
        pass

    assert "repr-check" in repr(work)


def test_default_name_is_the_qualname(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> None:
        pass

    assert work().name == work.__qualname__
    assert work.__qualname__.endswith("<locals>.work")


class _Scale:
    def __call__(self, x: int) -> int:
        return 2 * x


def _look_up(table: dict[int, str], key: int) -> str:
    return table[key]


def test_a_partial_or_a_callable_object_is_named_briefly_not_by_its_repr() -> None:
    # A partial was named by its repr, every bound argument included: over a lookup
    # table, a name of megabytes, made at each decoration and each map, that every
    # process task carried; a callable object's repr has its address (a metrics
    # record per instance).
    table = {i: str(i) for i in range(100_000)}
    looked_up = mp.parallel(functools.partial(_look_up, table))
    assert looked_up(7).name == "partial(_look_up)"
    assert looked_up(7).get(timeout=10) == "7"
    assert mp.parallel(_Scale())(3).name == "_Scale"
    assert mp.parallel(_Scale())(3).get(timeout=10) == 6


# -- methods ---------------------------------------------------------------------------


class Counter:
    """A class with every kind of parallel method."""

    factor = 10

    def __init__(self, start: int) -> None:
        self.start = start

    @mp.parallel
    def add(self, x: int) -> int:
        return self.start + x

    @mp.parallel(backend="sync", name="Counter.add_sync")
    def add_sync(self, x: int) -> int:
        return self.start + x

    @staticmethod
    @mp.parallel
    def static_below(x: int) -> int:
        return x + 1

    @mp.parallel
    @staticmethod
    def static_above(x: int) -> int:
        return x + 2

    @mp.parallel(backend="sync")
    @staticmethod
    def static_above_with_options(x: int) -> int:
        return x + 3

    @classmethod
    @mp.parallel
    def class_below(cls, x: int) -> int:
        return cls.factor * x

    @mp.parallel
    @classmethod
    def class_above(cls, x: int) -> int:
        return cls.factor * x + 1

    @mp.parallel(backend="sync")
    @classmethod
    def class_above_with_options(cls, x: int) -> int:
        return cls.factor * x + 2


class SubCounter(Counter):
    factor = 100


def test_instance_method() -> None:
    counter = Counter(5)
    assert counter.add(2).get(5) == 7
    assert counter.add_sync(3).get(5) == 8
    assert Counter.add(counter, 4).get(5) == 9  # through the class, self passed


def test_instance_methods_bind_their_own_instance() -> None:
    handles = [Counter(i).add(100) for i in range(20)]
    assert [h.get(5) for h in handles] == [100 + i for i in range(20)]


def test_bound_method_options_override_the_decorator() -> None:
    counter = Counter(1)
    handle = counter.add_sync.options(backend="thread", name="Counter.add_sync.renamed")(1)
    assert handle.get(5) == 2
    assert handle.name == "Counter.add_sync.renamed"


def test_bound_method_options(backend: str) -> None:
    counter = Counter(10)
    bound = counter.add.options(backend=backend)
    assert bound(5).get(5) == 15
    assert "Counter" in repr(counter.add)


@pytest.mark.parametrize("method", ["static_below", "static_above", "static_above_with_options"])
def test_staticmethod_in_both_orders(method: str) -> None:
    offset = {"static_below": 1, "static_above": 2, "static_above_with_options": 3}[method]
    assert getattr(Counter, method)(1).get(5) == 1 + offset
    assert getattr(Counter(0), method)(1).get(5) == 1 + offset


@pytest.mark.parametrize("method", ["class_below", "class_above", "class_above_with_options"])
def test_classmethod_in_both_orders(method: str) -> None:
    offset = {"class_below": 0, "class_above": 1, "class_above_with_options": 2}[method]
    assert getattr(Counter, method)(2).get(5) == 20 + offset
    assert getattr(Counter(0), method)(2).get(5) == 20 + offset
    assert getattr(SubCounter, method)(2).get(5) == 200 + offset


@pytest.mark.parametrize("method", ["class_above", "class_above_with_options"])
def test_classmethod_under_parallel_binds_its_class_in_options_and_maps(method: str) -> None:
    # Python 3.13's classmethod no longer binds through the descriptor it wraps:
    # options() lost the class, and a map got handles for results.
    offset = {"class_above": 1, "class_above_with_options": 2}[method]
    assert getattr(SubCounter, method).options(timeout=5)(2).get(5) == 200 + offset
    assert getattr(SubCounter(0), method).options(timeout=5)(2).get(5) == 200 + offset
    assert mp.parallel_map(getattr(SubCounter, method), [1, 2], timeout=30) == [100 + offset, 200 + offset]


@pytest.mark.parametrize("method", ["class_below", "class_above"])
def test_a_class_method_runs_its_plain_function_in_maps_and_executors_in_both_orders(method: str) -> None:
    # From Python 3.13, @classmethod over @parallel gives a plain bound method of the
    # ParallelFunction, which the maps, an Executor and a ParallelContext ran as a
    # function returning handles: each gave handles for results.
    offset = {"class_below": 0, "class_above": 1}[method]
    fn = getattr(SubCounter, method)
    expected = [100 + offset, 200 + offset]
    assert mp.parallel_map(fn, [1, 2], timeout=30) == expected
    assert list(mp.imap(fn, [1, 2], timeout=30)) == expected
    with mp.Executor(max_workers=2) as executor:
        assert list(executor.map(fn, [1, 2], timeout=30)) == expected
        assert executor.submit(fn, 1).result(timeout=30) == expected[0]
    with mp.ParallelContext() as ctx:
        handles = [*ctx.map(fn, [1]), ctx.submit(fn, 2)]
    assert [handle.get(5) for handle in handles] == expected


def test_staticmethod_options(backend: str) -> None:
    assert Counter.static_above.options(backend=backend)(1).get(5) == 3


def test_staticmethod_with_options_runs_on_its_backend() -> None:
    assert Counter.static_above_with_options(1).is_ready()  # sync: done on return


# -- options() -------------------------------------------------------------------------


def test_options_returns_a_copy_and_leaves_the_original(backend: str) -> None:
    @mp.parallel(name="options-original")
    def work() -> int:
        return threading.get_ident()

    renamed = work.options(name="options-renamed", backend=backend)
    assert isinstance(renamed, mp.ParallelFunction)
    assert renamed is not work
    handle = renamed()
    handle.get(5)
    assert handle.name == "options-renamed"
    original = work()
    original.get(5)
    assert original.name == "options-original"


def test_options_timeout_applies(backend: str, gate: threading.Event) -> None:
    @mp.parallel(backend=backend)
    def slow() -> None:
        poll_until_stopped(gate)

    with pytest.raises(mp.TaskTimeoutError, match="timed out"):
        slow.options(timeout=0.05)().get(5)


def test_options_can_be_chained(backend: str) -> None:
    @mp.parallel
    def work() -> str:
        return "done"

    chained = work.options(name="options-chained").options(backend=backend)
    handle = chained()
    assert handle.get(5) == "done"
    assert handle.name == "options-chained"


# -- call-time options -----------------------------------------------------------------


def test_call_time_timeout_is_taken_by_the_library(backend: str, gate: threading.Event) -> None:
    received: list[dict[str, Any]] = []

    @mp.parallel(backend=backend)
    def slow(**kwargs: Any) -> None:
        received.append(kwargs)
        poll_until_stopped(gate)

    handle = slow(timeout=0.05)
    with pytest.raises(mp.TaskTimeoutError, match="timed out after 0.05 s"):
        handle.get(5)
    assert received == [{}]  # the function never saw the option


def test_call_time_priority_is_taken_by_the_library(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work(x: int, **kwargs: Any) -> dict[str, Any]:
        return kwargs

    assert work(1, priority=7).get(5) == {}
    assert work(1, other=1, priority=7).get(5) == {"other": 1}


def test_call_time_options_are_validated_at_the_call(backend: str) -> None:
    ran: list[int] = []

    @mp.parallel(backend=backend)
    def work(x: int) -> None:
        ran.append(x)

    with pytest.raises(ValueError, match="timeout"):
        work(1, timeout=-1)
    with pytest.raises(TypeError, match="timeout"):
        work(2, timeout="soon")
    with pytest.raises(TypeError, match="priority"):
        work(3, priority="high")
    with pytest.raises(TypeError, match="priority"):
        work(4, priority=1.5)
    assert ran == []  # none of the rejected calls submitted a task


def test_timeout_parameter_goes_to_the_function(backend: str) -> None:
    @mp.parallel(backend=backend)
    def f(x: int, timeout: float) -> float:
        return timeout

    assert f(1, timeout=0.001).get(5) == 0.001
    assert f(1, timeout=-1).get(5) == -1  # the function's own value: not validated
    assert f(1, 2).get(5) == 2


def test_priority_parameter_goes_to_the_function(backend: str) -> None:
    @mp.parallel(backend=backend)
    def f(*, priority: str) -> str:
        return priority

    assert f(priority="high").get(5) == "high"


def test_one_option_taken_the_other_passed(backend: str) -> None:
    @mp.parallel(backend=backend)
    def f(priority: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        return priority, kwargs

    assert f(priority="p", timeout=30).get(5) == ("p", {})


@pytest.mark.parametrize(
    ("fn", "claimed"),
    [(abs, set()), (zlib.compress, set()), (select.select, set()), (os.setpriority, {"priority"}), (len, set())],
    ids=["abs", "zlib.compress", "select.select (timeout positional-only)", "os.setpriority", "len"],
)
def test_a_c_function_claims_only_the_options_it_names(fn: Callable[..., Any], claimed: set[str]) -> None:
    assert own_parameters(fn, ("timeout", "priority")) == claimed


def object_called_through(kind: str) -> Any:
    """An object whose class's ``__call__`` is of ``kind`` and takes ``(timeout, priority)`` as a call passes them."""

    def call(timeout: Any, priority: Any = None) -> tuple[Any, Any]:
        return timeout, priority

    if kind == "staticmethod":
        method: Any = staticmethod(call)
    elif kind == "classmethod":  # the class comes first
        method = classmethod(lambda cls, timeout, priority=None: call(timeout, priority))
    else:  # an object of its own, no descriptor: called as it is, with no self
        method = type("Inner", (), {"__call__": lambda inner, timeout, priority=None: call(timeout, priority)})()
    return type("Outer", (), {"__call__": method})()


@pytest.mark.parametrize("kind", ["staticmethod", "classmethod", "callable object"])
def test_an_object_whose_call_is_no_plain_method_keeps_its_own_options(backend: str, kind: str) -> None:
    # inspect reads an object's __call__ less its first parameter, as if it took self: the
    # timeout of such a __call__ was not read as its own, and the library took timeout= away.
    obj = object_called_through(kind)
    assert own_parameters(obj, ("timeout", "priority")) == {"timeout", "priority"}
    assert mp.parallel(backend=backend)(obj)(timeout=-1, priority="high").get(5) == (-1, "high")


def test_a_c_function_takes_the_call_time_options(backend: str) -> None:
    negate_abs = mp.parallel(backend=backend)(abs)
    assert negate_abs(-3, timeout=30, priority=1).get(5) == 3


def test_options_never_clash_with_parameters(backend: str, gate: threading.Event) -> None:
    @mp.parallel(backend=backend)
    def f(timeout: float) -> float:
        poll_until_stopped(gate)
        return timeout

    handle = f.options(timeout=0.05)(timeout=99)
    with pytest.raises(mp.TaskTimeoutError):
        handle.get(5)


def test_method_call_time_options(backend: str) -> None:
    class Service:
        @mp.parallel(backend=backend)
        def handle(self, request: str, **kwargs: Any) -> tuple[str, dict[str, Any]]:
            return request, kwargs

    assert Service().handle("r", priority=2, timeout=30).get(5) == ("r", {})


# -- validation at decoration ----------------------------------------------------------


@pytest.mark.parametrize("not_callable", [42, "f", object(), [1]])
def test_non_callable_is_rejected(not_callable: object) -> None:
    with pytest.raises(TypeError, match="callable"):
        mp.parallel(not_callable)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="callable"):
        mp.parallel(backend="sync")(not_callable)  # type: ignore[arg-type]


def _numbers(n: int) -> Iterator[int]:
    yield from range(n)


async def _async_numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


def _passing_through(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator written the usual way, with functools.wraps."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


class _Counter:
    def __call__(self, n: int) -> Iterator[int]:
        yield from range(n)

    def count(self, n: int) -> Iterator[int]:
        yield from range(n)


@pytest.mark.parametrize(
    ("function", "kind"),
    [
        pytest.param(_numbers, "a generator", id="generator function"),
        pytest.param(_async_numbers, "an async generator", id="async generator function"),
        pytest.param(functools.partial(_numbers, 3), "a generator", id="partial"),
        pytest.param(functools.partial(_async_numbers, 3), "an async generator", id="async partial"),
        pytest.param(_passing_through(_numbers), "a generator", id="functools.wraps decorator"),
        pytest.param(_passing_through(_async_numbers), "an async generator", id="async under wraps"),
        pytest.param(functools.partial(_passing_through(_numbers), 3), "a generator", id="partial of wraps"),
        pytest.param(_passing_through(functools.partial(_numbers, 3)), "a generator", id="wraps of partial"),
        pytest.param(_Counter().count, "a generator", id="bound generator method"),
        pytest.param(_Counter(), "a generator", id="callable object"),
    ],
)
def test_generator_functions_are_refused_at_decoration(function: Callable[..., Any], kind: str) -> None:
    pattern = rf"it is {kind} function.*makeparallel\.imap.*return a list"
    with pytest.raises(TypeError, match=pattern):
        mp.parallel(function)
    with pytest.raises(TypeError, match=pattern):
        mp.parallel(backend="sync", timeout=5)(function)


def test_generator_methods_are_refused_in_the_class_body() -> None:
    with pytest.raises(TypeError, match="generator function"):

        class Plain:
            @mp.parallel
            def rows(self) -> Iterator[int]:
                yield 1

    for wrap in (staticmethod, classmethod):
        with pytest.raises(TypeError, match="generator function"):
            mp.parallel(wrap(_numbers))  # type: ignore[call-overload]


def test_functions_that_collect_a_generator_are_accepted() -> None:
    @mp.parallel(backend="sync")
    def squares(n: int) -> list[int]:
        return [i * i for i in _numbers(n)]

    class Summer:
        def __call__(self, n: int) -> int:
            return sum(_numbers(n))

    assert squares(4).get(5) == [0, 1, 4, 9]
    assert mp.parallel(backend="sync")(_passing_through(sum))([1, 2]).get(5) == 3
    assert mp.parallel(backend="sync")(Summer())(4).get(5) == 6
    assert mp.parallel(backend="sync")(functools.partial(Summer(), 5))().get(5) == 10


def test_unknown_option_lists_the_accepted_ones() -> None:
    accepted = "async_cancel, backend, circuit_breaker, max_concurrent, name, priority, retry, timeout"
    with pytest.raises(TypeError, match=rf"'retries'.*{accepted}"):
        mp.parallel(retries=3)

    @mp.parallel
    def work() -> None:
        pass

    with pytest.raises(TypeError, match=rf"'bogus'.*{accepted}"):
        work.options(bogus=1)


def test_bad_backend_lists_the_accepted_values() -> None:
    with pytest.raises(ValueError, match=r"backend.*'thread'.*'sync'.*'gpu'"):
        mp.parallel(backend="gpu")

    @mp.parallel
    def work() -> None:
        pass

    with pytest.raises(ValueError, match=r"backend.*'thread'.*'sync'"):
        work.options(backend="threads")


@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        (-1, ValueError),
        (-0.001, ValueError),
        (0, ValueError),
        (0.0, ValueError),
        (math.nan, ValueError),
        (-math.inf, ValueError),
        ("5", TypeError),
        (True, TypeError),
        ([1], TypeError),
    ],
)
def test_bad_timeout_is_rejected(timeout: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="timeout"):
        mp.parallel(timeout=timeout)

    @mp.parallel
    def work() -> None:
        pass

    with pytest.raises(error, match="timeout"):
        work.options(timeout=timeout)
    with pytest.raises(error, match="timeout"):
        work(timeout=timeout)


def test_infinite_timeout_means_none(backend: str) -> None:
    @mp.parallel(backend=backend, timeout=math.inf)
    def work() -> int:
        return 1

    assert work().get(5) == 1


@pytest.mark.parametrize("priority", [1.5, "1", True, False, None])
def test_bad_priority_is_rejected(priority: object) -> None:
    with pytest.raises(TypeError, match="priority"):
        mp.parallel(priority=priority)

    @mp.parallel
    def work() -> None:
        pass

    with pytest.raises(TypeError, match="priority"):
        work.options(priority=priority)


def test_negative_priority_is_accepted(backend: str) -> None:
    @mp.parallel(backend=backend, priority=-5)
    def work() -> str:
        return "ok"

    assert work().get(5) == "ok"


@pytest.mark.parametrize(
    ("max_concurrent", "error"),
    [(0, ValueError), (-1, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError)],
)
def test_bad_max_concurrent_is_rejected(max_concurrent: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="max_concurrent"):
        mp.parallel(max_concurrent=max_concurrent)


@pytest.mark.parametrize(("name", "error"), [("", ValueError), (3, TypeError), (b"bytes", TypeError)])
def test_bad_name_is_rejected(name: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="name"):
        mp.parallel(name=name)

    @mp.parallel
    def work() -> None:
        pass

    with pytest.raises(error, match="name"):
        work.options(name=name)


def test_validation_happens_before_the_function_is_given() -> None:
    # The mistake shows on the line with the options, even if never applied.
    with pytest.raises(ValueError, match="timeout"):
        mp.parallel(timeout=-1)


# -- mocks of functions: what users test with ---------------------------------------------------


def _plain_task(x: int) -> int:
    """A plain task, for a mock to take the shape of."""
    return x + 1


async def _async_task(x: int) -> int:
    """An ``async def`` task, for a mock to take the shape of."""
    return x + 1


# A mock made with spec= of a function passes for a function (isinstance) while its __code__ is a
# mock too, whose co_flags a Mock cannot combine with an int (TypeError) and a MagicMock's match any
# flag (judged an async generator function). Called, each makes its return value, as a function does.
MOCKS_OF_A_FUNCTION = [
    pytest.param(lambda: mock.Mock(spec=_plain_task, return_value=7), id="Mock-spec"),
    pytest.param(lambda: mock.MagicMock(spec=_plain_task, return_value=7), id="MagicMock-spec"),
    pytest.param(lambda: mock.create_autospec(_plain_task, return_value=7), id="autospec"),
    pytest.param(lambda: mock.Mock(spec=_numbers, return_value=7), id="Mock-spec-of-a-generator-function"),
    pytest.param(lambda: functools.partial(mock.Mock(spec=_plain_task, return_value=7)), id="partial-of-Mock-spec"),
    pytest.param(lambda: functools.partial(mock.MagicMock(spec=_plain_task, return_value=7)), id="partial-of-MagicMock"),
]


def _through_executor(fn: Callable[[int], Any]) -> Any:
    with mp.Executor(max_workers=1) as executor:
        return executor.submit(fn, 1).result(5)


def _through_group(fn: Callable[[int], Any]) -> Any:
    with mp.TaskGroup() as group:
        handle = group.submit(fn, 1)
    return handle.get(5)


# Each way a function is judged (a generator function refused, an async def's coroutine awaited),
# and what it gives back for a task returning 7.
WAYS_TO_RUN = [
    pytest.param(lambda fn: mp.parallel(backend="thread")(fn)(1).get(5), id="parallel-thread"),
    pytest.param(lambda fn: mp.parallel(backend="sync")(fn)(1).get(5), id="parallel-sync"),
    pytest.param(lambda fn: mp.parallel_map(fn, [1])[0], id="parallel_map"),
    pytest.param(lambda fn: next(iter(mp.imap(fn, [1]))), id="imap"),
    pytest.param(lambda fn: mp.profiled(fn)(1), id="profiled"),
    pytest.param(lambda fn: mp.retry(fn)(1), id="retry"),
    pytest.param(lambda fn: mp.retry_backoff(fn)(1), id="retry_backoff"),
    pytest.param(_through_group, id="TaskGroup.submit"),
    pytest.param(_through_executor, id="Executor.submit"),
]


@pytest.mark.usefixtures("own_metrics")
@pytest.mark.parametrize("run", WAYS_TO_RUN)
@pytest.mark.parametrize("make", MOCKS_OF_A_FUNCTION)
def test_a_mock_of_a_function_is_taken_and_called_as_one(
    make: Callable[[], Any], run: Callable[[Callable[[int], Any]], Any]
) -> None:
    fn = make()
    assert run(fn) == 7
    called = fn.func if isinstance(fn, functools.partial) else fn
    called.assert_called_once_with(1)


@pytest.mark.usefixtures("own_metrics")
@pytest.mark.parametrize("run", WAYS_TO_RUN)
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: mock.AsyncMock(spec=_async_task, return_value=7), id="AsyncMock-spec"),
        pytest.param(lambda: mock.Mock(spec=_async_task, return_value=7), id="Mock-spec-of-an-async-function"),
        pytest.param(lambda: mock.MagicMock(spec=_async_task, return_value=7), id="MagicMock-spec-of-async"),
    ],
)
def test_a_mock_of_an_async_function_is_taken_as_one(
    make: Callable[[], Any], run: Callable[[Callable[[int], Any]], Any]
) -> None:
    fn = make()
    made = run(fn)
    # The decorators that run the call here give a coroutine function, as they do for an async def.
    assert (asyncio.run(made) if inspect.iscoroutine(made) else made) == 7
    fn.assert_awaited_once_with(1)


@pytest.mark.parametrize("decorate", [mp.profiled, mp.retry, mp.retry_backoff])
def test_decorators_over_a_mock_of_an_async_function_make_coroutine_functions(
    decorate: Callable[[Any], Any], own_metrics: None
) -> None:
    assert inspect.iscoroutinefunction(decorate(mock.AsyncMock(spec=_async_task)))
    assert not inspect.iscoroutinefunction(decorate(mock.Mock(spec=_plain_task)))


@pytest.mark.timeout(120)
def test_a_process_task_of_a_mock_is_refused_as_unpicklable() -> None:
    # A mock cannot be pickled: the process backend says so, as for any task it cannot send.
    in_processes = mp.parallel(backend="process")(mock.Mock(spec=_plain_task, return_value=7))
    with pytest.raises(mp.TaskSerializationError, match="function <Mock .*could not be pickled"):
        in_processes(1)
    with pytest.raises(mp.TaskSerializationError, match="initializer"):
        mp.configure_process_pool(initializer=mock.Mock(spec=_plain_task))


# -- the default backend ---------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("change", ["configure", "inline"])
def test_a_default_changed_as_another_thread_looks_it_up_is_not_lost(
    monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    # A thread's first call after a change of the default looks the backend up
    # afresh. The change that lands between its reading of the setting and its
    # keeping of what it found must win: kept, the old backend stayed the default
    # for every later call, as if the configure (or the test's inline block) had
    # never been made.
    from makeparallel import _runtime
    from makeparallel.testing import inline

    read, changed = threading.Event(), threading.Event()
    submitted: list[mp.AsyncHandle[int]] = []
    looked_up = _runtime.default_backend

    def paused_after_reading() -> Any:
        option = looked_up()
        if threading.current_thread() is submitter:
            read.set()
            changed.wait(10)
        return option

    monkeypatch.setattr(_runtime, "default_backend", paused_after_reading)
    _runtime.use_default_backend(None)  # looked up afresh at the next call
    submitter = threading.Thread(target=lambda: submitted.append(mp.parallel(threading.get_ident)()))
    submitter.start()
    try:
        assert read.wait(10)
        with inline() if change == "inline" else contextlib.nullcontext():
            if change == "configure":
                mp.configure(backend="sync")
            changed.set()
            submitter.join(10)
            assert submitted and submitted[0].wait(10)  # it used the default it read: threads
            assert default_runs_inline()
    finally:
        changed.set()
        submitter.join(10)


@pytest.mark.timeout(30)
def test_a_call_of_an_auto_function_takes_no_runtime_lock_once_its_pool_exists() -> None:
    # A call of a function that names a backend finds its pool in one dict lookup.
    # "auto" was looked for under its own name, never kept so, and each call took
    # the runtime's lock to create its pool again: a lock a signal handler's call
    # could wait for in the thread it interrupted, and ~2 us per call on a Python
    # without sys._is_gil_enabled.
    from makeparallel import _runtime

    resolved = _runtime.get_backend(_runtime.resolve_auto("auto"))  # the pool "auto" means here
    found: list[object] = []
    with _runtime._lock:  # held, as by another thread, or by the one a signal handler interrupts
        looker = threading.Thread(target=lambda: found.append(_runtime.get_backend("auto")), daemon=True)
        looker.start()
        looker.join(10)
        looked_up_without_the_lock = not looker.is_alive()
    looker.join(10)
    assert looked_up_without_the_lock
    assert found == [resolved]
