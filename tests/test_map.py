"""Batch maps: ``parallel_map`` (a list) and ``imap`` (lazy), in chunks.

Correctness is checked as properties (hypothesis): for any input and chunk size
the result equals ``list(map(fn, xs))``. Laziness is measured by counting how many
items were pulled from a generator. Orderings are forced with a gate.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import itertools
import re
import sys
import threading
import time
import types
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import makeparallel as mp
from makeparallel import _chunk_task, _map
from makeparallel._chunk_task import run_chunk
from makeparallel._map import _FIRST_WAVE_SECONDS, _MAX_CHUNK, DEFAULT_MAX_BYTES_IN_FLIGHT, _ChunkSizer, _start
from makeparallel.testing import wait_until_idle
from pool_helpers import earlier_items_alive, hold_one_worker, in_thread, wait_until

BACKENDS = ["thread", "sync"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


class Boom(Exception):
    """A user error with a custom signature."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code


def triple_plus_one(x: int) -> int:
    return 3 * x + 1


def fail_on_multiples_of_five(x: int) -> int:
    if x % 5 == 0:
        raise Boom(x, "multiple of five")
    return x


class Counted:
    """An endless generator that counts how many items were pulled from it."""

    def __init__(self) -> None:
        self.pulled = 0

    def __iter__(self) -> Iterator[int]:
        return self._generate()

    def _generate(self) -> Iterator[int]:
        for i in itertools.count():
            self.pulled += 1
            yield i


# -- correctness as properties --------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=50, deadline=None)
@given(xs=st.lists(st.integers()), chunksize=st.integers(min_value=1, max_value=50))
def test_ordered_map_equals_builtin_map(backend: str, xs: list[int], chunksize: int) -> None:
    expected = list(map(triple_plus_one, xs))
    assert mp.parallel_map(triple_plus_one, xs, chunksize=chunksize, backend=backend) == expected
    assert list(mp.imap(triple_plus_one, xs, chunksize=chunksize, backend=backend)) == expected


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=50, deadline=None)
@given(xs=st.lists(st.integers()), chunksize=st.integers(min_value=1, max_value=50))
def test_unordered_map_gives_the_same_multiset(backend: str, xs: list[int], chunksize: int) -> None:
    expected = sorted(map(triple_plus_one, xs))
    got = mp.parallel_map(triple_plus_one, xs, chunksize=chunksize, ordered=False, backend=backend)
    assert sorted(got) == expected  # type: ignore[type-var]
    lazy = mp.imap(triple_plus_one, xs, chunksize=chunksize, ordered=False, backend=backend)
    assert sorted(lazy) == expected  # type: ignore[type-var]


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=50, deadline=None)
@given(
    xs=st.lists(st.integers()),
    chunksize=st.none() | st.integers(min_value=1, max_value=50),
    ordered=st.booleans(),
)
def test_map_over_a_generator_without_length(
    backend: str, xs: list[int], chunksize: int | None, ordered: bool
) -> None:
    expected = list(map(triple_plus_one, xs))
    got = mp.parallel_map(
        triple_plus_one, (x for x in xs), chunksize=chunksize, ordered=ordered, backend=backend
    )
    if ordered:
        assert got == expected
    else:
        assert sorted(got) == sorted(expected)  # type: ignore[type-var]


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=50, deadline=None)
@given(
    start=st.integers(-300, 300),
    stop=st.integers(-300, 300),
    step=st.integers(-7, 7).filter(bool),
    chunksize=st.none() | st.integers(min_value=1, max_value=50),
    ordered=st.booleans(),
)
def test_map_over_a_range_equals_builtin_map(
    backend: str, start: int, stop: int, step: int, chunksize: int | None, ordered: bool
) -> None:
    items = range(start, stop, step)
    expected = list(map(triple_plus_one, items))
    got = mp.parallel_map(triple_plus_one, items, chunksize=chunksize, ordered=ordered, backend=backend)
    assert (got if ordered else sorted(got)) == (expected if ordered else sorted(expected))  # type: ignore[type-var]


@pytest.mark.parametrize(
    ("items", "kind"),
    [(range(10, 100_000, 3), range), (list(range(30_000)), list), (tuple(range(30_000)), list)],
    ids=["range", "list", "tuple"],
)
def test_a_range_is_read_in_range_chunks_and_other_inputs_in_lists(items: Any, kind: type) -> None:
    # A range's chunk is a range: a worker process receives it in a few bytes.
    mapper = _start(triple_plus_one, items, None, True, False, None, None, "raise", "thread")
    chunks = mapper.chunks()
    first = next(chunks)
    read = [chunk for _, chunk, _ in mapper._chunk_items.values()]
    assert read and all(type(chunk) is kind for chunk in read)
    assert first + [x for chunk in chunks for x in chunk] == list(map(triple_plus_one, items))


@pytest.mark.parametrize("chunksize", [1, 4, 100])
def test_a_list_grown_by_its_items_is_mapped_to_its_new_end_as_map_does(chunksize: int) -> None:
    # The sync backend runs each chunk as it is read, so the list grows before the next read.
    def run(mapper: Any) -> list[int]:
        xs = list(range(10))

        def grow(x: int) -> int:
            if x < 100:
                xs.append(x + 100)
            return x

        return list(mapper(grow, xs))

    expected = run(map)
    assert len(expected) == 20
    assert run(functools.partial(mp.imap, chunksize=chunksize, backend="sync")) == expected


def test_a_range_longer_than_sys_maxsize_is_read_lazily(backend: str) -> None:
    # len() of such a range raises OverflowError; map reads it lazily, and so does imap.
    items = range(-(10**20), 10**20, 3)
    results = mp.imap(triple_plus_one, items, backend=backend)
    try:
        assert list(itertools.islice(results, 1_000)) == list(itertools.islice(map(triple_plus_one, items), 1_000))
    finally:
        results.close()


class _LengthRefused:
    """Iterable, with a ``__len__`` that raises TypeError, as a stream-backed data set's may."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.count))

    def __len__(self) -> int:
        raise TypeError("this stream has no length")


@pytest.mark.parametrize("count", [0, 1, 50])
def test_an_iterable_whose_len_raises_type_error_is_read_as_one_of_unknown_length(backend: str, count: int) -> None:
    # map() and list() read it (operator.length_hint takes that TypeError for "no length");
    # the maps raised it at the call.
    expected = [triple_plus_one(x) for x in range(count)]
    assert mp.parallel_map(triple_plus_one, _LengthRefused(count), backend=backend) == expected
    assert list(mp.imap(triple_plus_one, _LengthRefused(count), backend=backend)) == expected
    totals: list[int | None] = []
    shown = mp.parallel_map(
        triple_plus_one, _LengthRefused(count), backend=backend, progress=lambda _, total: totals.append(total)
    )
    assert shown == expected
    assert set(totals) <= {None}  # its length is unknown


@pytest.mark.parametrize("size", [0, 1, 7, 100_000])
def test_automatic_chunk_size_gives_right_results(backend: str, size: int) -> None:
    xs = list(range(size))
    expected = [triple_plus_one(x) for x in xs]
    assert mp.parallel_map(triple_plus_one, xs, backend=backend) == expected
    assert list(mp.imap(triple_plus_one, iter(xs), backend=backend)) == expected
    unordered = mp.parallel_map(triple_plus_one, xs, ordered=False, backend=backend)
    assert sorted(unordered) == expected  # type: ignore[type-var]


def test_a_small_max_in_flight_still_maps_everything(backend: str) -> None:
    xs = range(500)
    assert mp.parallel_map(triple_plus_one, xs, max_in_flight=1, backend=backend) == [
        triple_plus_one(x) for x in xs
    ]
    assert sorted(mp.imap(triple_plus_one, xs, max_in_flight=3, ordered=False, backend=backend)) == [  # type: ignore[type-var]
        triple_plus_one(x) for x in xs
    ]


def test_parallel_map_returns_a_list(backend: str) -> None:
    result = mp.parallel_map(triple_plus_one, (1, 2, 3), backend=backend)
    assert isinstance(result, list)
    assert result == [4, 7, 10]


# -- functions accepted ------------------------------------------------------------------------


def test_a_lambda_and_a_builtin(backend: str) -> None:
    assert mp.parallel_map(lambda s: s.upper(), ["a", "b"], backend=backend) == ["A", "B"]
    assert mp.parallel_map(len, ["", "ab", "abc"], backend=backend) == [0, 2, 3]


def test_a_decorated_function_is_mapped_with_its_own_backend() -> None:
    caller = threading.get_ident()

    @mp.parallel(backend="sync")
    def where(x: int) -> tuple[int, int]:
        return x, threading.get_ident()

    results = mp.parallel_map(where, range(20), chunksize=3)
    assert [x for x, _ in results] == list(range(20))  # type: ignore[misc]
    assert {ident for _, ident in results} == {caller}  # type: ignore[misc]


def test_a_decorated_function_returns_plain_results(backend: str) -> None:
    @mp.parallel(backend=backend)
    def double(x: int) -> int:
        return 2 * x

    assert mp.parallel_map(double, range(10)) == [2 * x for x in range(10)]
    assert sorted(mp.imap(double, range(10), ordered=False)) == [2 * x for x in range(10)]  # type: ignore[type-var]


def test_a_bound_parallel_method(backend: str) -> None:
    class Scaler:
        def __init__(self, factor: int) -> None:
            self.factor = factor

        @mp.parallel(backend=backend)
        def scale(self, x: int) -> int:
            return self.factor * x

    scaler = Scaler(4)
    assert mp.parallel_map(scaler.scale, range(10), chunksize=3) == [4 * x for x in range(10)]
    assert list(mp.imap(scaler.scale, [1, 2])) == [4, 8]


@pytest.mark.timeout(20)
def test_a_static_method_object_of_a_parallel_function_returns_plain_results(backend: str) -> None:
    # As its class's body reads it (or vars(cls)): a staticmethod around the @parallel function,
    # callable since Python 3.10 as that function. The map called it per item, each call a task
    # of its own, and gave back their handles (on worker processes, failed sending one back).
    class Steps:
        @mp.parallel(backend=backend)
        @staticmethod
        def triple(x: int) -> int:
            return 3 * x

        steps = (triple,)

    (triple,) = Steps.steps
    assert isinstance(triple, staticmethod)
    assert mp.parallel_map(triple, range(5), chunksize=2) == [3 * x for x in range(5)]
    assert list(mp.imap(triple, [1, 2])) == [3, 6]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("given", ["function", "static method object", "bound method", "async function"])
def test_a_partial_of_a_parallel_function_returns_plain_results(backend: str, given: str) -> None:
    # partial(work, scale=2), work being @parallel: the map called the partial per item, which called
    # the parallel function, each call a task of its own, and gave back their handles (on worker
    # processes, failed sending one back), as it did for the function itself before it ran its plain one.
    class Scaler:
        @mp.parallel(backend=backend, name="scaled")
        @staticmethod
        def scaled(x: int, scale: int = 1) -> int:
            return scale * x

        @mp.parallel(backend=backend, name="scaled")
        def by(self, x: int, scale: int = 1) -> int:
            return scale * x

        @mp.parallel(backend=backend, name="scaled")
        @staticmethod
        async def later(x: int, scale: int = 1) -> int:
            return scale * x

        static = scaled

    fn = {
        "function": Scaler.scaled,
        "static method object": Scaler.static,
        "bound method": Scaler().by,
        "async function": Scaler.later,
    }[given]
    double = functools.partial(fn, scale=2)
    assert mp.parallel_map(double, range(5), chunksize=2) == [2 * x for x in range(5)]
    assert list(mp.imap(double, [1, 2])) == [2, 4]


@pytest.mark.timeout(20)
def test_a_partial_over_a_partial_of_a_parallel_function_returns_plain_results(backend: str) -> None:
    # A partial with attributes of its own (functools.update_wrapper's) is not merged into a partial
    # made over it: the map took the outer one for a plain callable, and gave back each item's handle.
    @mp.parallel(backend=backend, name="scaled")
    def scaled(x: int, scale: int = 1, offset: int = 0) -> int:
        return scale * x + offset

    inner = functools.update_wrapper(functools.partial(scaled, scale=2, offset=5), scaled)
    outer = functools.partial(inner, offset=1)
    assert outer.func is inner  # (not merged)
    assert mp.parallel_map(outer, range(5), chunksize=2) == [2 * x + 1 for x in range(5)]
    assert list(mp.imap(outer, [1, 2])) == [3, 5]


def test_the_backend_argument_runs_inline_on_sync() -> None:
    caller = threading.get_ident()
    idents = mp.parallel_map(lambda _: threading.get_ident(), range(50), backend="sync")
    assert set(idents) == {caller}


def test_maps_of_one_function_keep_one_record_and_follow_the_backend() -> None:
    # The chunk task of a map is reused across calls: its metrics still count
    # every call (also after a reset), and a map on another backend runs there.
    def cached_noop(x: int) -> int:
        return threading.get_ident()

    name = "test_maps_of_one_function_keep_one_record_and_follow_the_backend.<locals>.cached_noop [map]"
    caller = threading.get_ident()
    for backend in ("thread", "sync", "thread"):
        idents = mp.parallel_map(cached_noop, range(5), chunksize=5, backend=backend)
        assert len(idents) == 5
        if backend == "sync":
            assert set(idents) == {caller}
    metrics = mp.get_metrics(name)
    assert metrics is not None and metrics.completed_tasks == 3
    mp.reset_metrics()
    mp.parallel_map(cached_noop, range(5), chunksize=5)
    metrics = mp.get_metrics(name)
    assert metrics is not None and metrics.completed_tasks == 1


def test_a_map_does_not_keep_its_executor_alive() -> None:
    import gc
    import weakref
    from concurrent.futures import ThreadPoolExecutor

    executor = ThreadPoolExecutor(2)
    assert mp.parallel_map(abs, [-1, -2], backend=executor) == [1, 2]
    executor.shutdown()
    gone = weakref.ref(executor)
    del executor
    gc.collect()
    assert gone() is None


# -- failures ----------------------------------------------------------------------------------


def fail_on_13(x: int) -> int:
    if x == 13:
        raise Boom(13, "unlucky")
    return x


def test_a_failing_item_raises_its_own_exception_with_its_index(backend: str) -> None:
    for chunksize in (None, 1, 4, 100):
        with pytest.raises(Boom) as caught:
            mp.parallel_map(fail_on_13, range(30), chunksize=chunksize, backend=backend)
        assert caught.value.code == 13
        notes = [n for n in caught.value.__notes__ if "raised by item" in n]
        assert len(notes) == 1
        assert "item 13 (13)" in notes[0]


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
@pytest.mark.parametrize("loop", ["for", "async for"])
def test_imap_hands_out_the_results_before_a_failing_item_then_raises_it(loop: str, ordered: bool, backend: str) -> None:
    # Item 13 stops its chunk (items 10 to 19): items 10 to 12 had run, and
    # their results were lost with the chunk's error.
    got: list[int] = []

    async def collect() -> None:
        async for result in mp.imap(fail_on_13, range(30), chunksize=10, ordered=ordered, backend=backend):
            got.append(result)

    with pytest.raises(Boom) as caught:
        if loop == "for":
            for result in mp.imap(fail_on_13, range(30), chunksize=10, ordered=ordered, backend=backend):
                got.append(result)
        else:
            asyncio.run(collect())
    assert caught.value.code == 13
    assert not [name for name in vars(caught.value) if name.startswith("_makeparallel")]  # nothing of ours left on it
    if ordered:
        assert got == list(range(13))
    else:  # the other chunks may end before or after it
        assert set(range(10, 13)) <= set(got) <= set(range(13)) | set(range(20, 30))
        assert len(got) == len(set(got))


def test_one_exception_raised_again_by_items_of_two_chunks_stops_imap_at_the_first(backend: str) -> None:
    # A stored error raised again ("the service failed before: its error
    # again") by items of two chunks: the second chunk's results were handed
    # out as the first's, or the first's were lost.
    stored = ConnectionError("the service is unreachable")

    def fetch(x: int) -> int:
        if x in (15, 25):
            raise stored
        return x

    got = []
    with pytest.raises(ConnectionError) as caught:
        for result in mp.imap(fetch, range(40), chunksize=10, backend=backend):
            got.append(result)
    assert caught.value is stored
    assert got == list(range(15))


def stop_at_13(x: int) -> int:
    if x == 13:
        raise StopIteration("an iterator ran dry inside the item")
    return x


@pytest.mark.parametrize("backend", [*BACKENDS, "process"])
def test_an_item_that_raises_stop_iteration_fails_alone_instead_of_ending_its_slice(backend: str) -> None:
    # map() took the item's StopIteration for its own end: the slice ended
    # early, and the chunk ran the item again, and again, for good. A chunk of
    # one item (a map of one, on processes any chunk) let it out as itself: the
    # loop or generator around the map ended early, or it became a generator's
    # RuntimeError, which named the item only in its cause.
    with pytest.raises(RuntimeError, match="^the map's function raised StopIteration") as caught:
        mp.parallel_map(stop_at_13, [13], backend=backend)
    assert "makeparallel: raised by item 0 (13)" in caught.value.__notes__
    for chunksize in (None, 1, 4):
        with pytest.raises(RuntimeError, match="^the map's function raised StopIteration") as caught:
            mp.parallel_map(stop_at_13, range(30), chunksize=chunksize, backend=backend)
        assert "makeparallel: raised by item 13 (13)" in caught.value.__notes__
        assert mp.parallel_map(stop_at_13, range(30), chunksize=chunksize, backend=backend, on_error="skip") == [
            x for x in range(30) if x != 13
        ]
    got = []
    with pytest.raises(RuntimeError, match="raised StopIteration"):
        for result in mp.imap(stop_at_13, range(30), chunksize=10, backend=backend):
            got.append(result)
    assert got == list(range(13))


def stop_async_at_13(x: int) -> int:
    if x == 13:
        raise StopAsyncIteration("an async iterator ran dry inside the item")
    return x


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", [*BACKENDS, "process"])
def test_an_item_that_raises_stop_async_iteration_fails_async_for_with_an_error_naming_it(backend: str) -> None:
    # No async generator can pass a StopAsyncIteration on (PEP 525): `async for`
    # over an imap raised Python's "async generator raised StopAsyncIteration",
    # which named a generator of the library's and carried the item's note only
    # in its cause. The items before it are handed out first, as for any error.
    async def collect(got: list[int]) -> None:
        async for result in mp.imap(stop_async_at_13, range(30), chunksize=10, backend=backend):
            got.append(result)

    got: list[int] = []
    with pytest.raises(RuntimeError, match="^the map's function raised StopAsyncIteration") as caught:
        asyncio.run(collect(got))
    assert got == list(range(13))
    assert isinstance(caught.value.__cause__, StopAsyncIteration)
    assert "makeparallel: raised by item 13 (13)" in caught.value.__notes__
    # Iterated without `async for`, or collected, it passes on as itself.
    with pytest.raises(StopAsyncIteration):
        list(mp.imap(stop_async_at_13, range(30), chunksize=10, backend=backend))


def input_that_stops_async() -> Iterator[int]:
    yield 0
    yield 1
    raise StopAsyncIteration("an async iterator ran dry inside the input")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ordered", [True, False])
def test_an_input_that_raises_stop_async_iteration_is_named_as_the_input_not_the_function(ordered: bool) -> None:
    # The input's StopAsyncIteration, read with `async for`, failed with "the map's
    # function raised StopAsyncIteration": the function never raised it, and nothing
    # else pointed at the input.
    async def collect(got: list[int]) -> None:
        async for result in mp.imap(stop_async_at_13, input_that_stops_async(), ordered=ordered):
            got.append(result)

    got: list[int] = []
    with pytest.raises(RuntimeError, match="^the map's input raised StopAsyncIteration") as caught:
        asyncio.run(collect(got))
    assert sorted(got) == [0, 1]
    assert isinstance(caught.value.__cause__, StopAsyncIteration)


class Abort(BaseException):
    """What a program raises to stop, not an error."""


@pytest.mark.parametrize("stop", [SystemExit(3), Abort("stop")], ids=["SystemExit", "a BaseException"])
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_an_item_that_raises_a_base_exception_ends_the_map_with_its_index(
    stop: BaseException, on_error: str, backend: str
) -> None:
    def stop_at_13(x: int) -> int:
        if x == 13:
            raise stop
        return x

    for chunksize in (1, 4):
        with pytest.raises(type(stop)) as caught:
            mp.parallel_map(stop_at_13, range(30), chunksize=chunksize, backend=backend, on_error=on_error)  # type: ignore[call-overload]
        assert caught.value is stop
        assert "makeparallel: raised by item 13 (13)" in caught.value.__notes__
        del caught.value.__notes__


def exit_at_13(x: int) -> int:
    if x == 13:
        sys.exit(4)
    return x


def fail_at_11_exit_at_13(x: int) -> int:
    if x == 11:
        raise Boom(11, "unlucky")
    return exit_at_13(x)


# Not "sync": on the main thread, where its chunks run, an item's SystemExit is raised at once, as a signal's.
@pytest.mark.parametrize("backend", ["thread", "process"])
@pytest.mark.parametrize(
    ("on_error", "fn", "before"),
    [("raise", exit_at_13, [10, 11, 12]), ("skip", fail_at_11_exit_at_13, [10, 12]), ("none", fail_at_11_exit_at_13, [10, None, 12])],
    ids=["raise", "skip", "none"],
)
def test_imap_hands_out_the_results_before_an_items_system_exit(
    on_error: str, fn: Any, before: list[Any], backend: str
) -> None:
    # Item 13 exits in its chunk (items 10 to 19): the results of items 10 to
    # 12 were lost with it, where an Exception's chunk hands them out first.
    got: list[Any] = []
    with pytest.raises(SystemExit) as caught:
        for result in mp.imap(fn, range(30), chunksize=10, backend=backend, on_error=on_error):
            got.append(result)
    assert caught.value.code == 4
    assert got == list(range(10)) + before


def test_the_note_names_a_short_repr_of_the_item(backend: str) -> None:
    def fail_on_long(s: str) -> int:
        if len(s) > 100:
            raise ValueError("too long")
        return len(s)

    items = ["short", "x" * 10_000]
    with pytest.raises(ValueError, match="too long") as caught:
        mp.parallel_map(fail_on_long, items, backend=backend)
    (note,) = [n for n in caught.value.__notes__ if "raised by item" in n]
    assert "item 1" in note
    assert "'xxx" in note and "..." in note
    assert len(note) < 200


def test_a_failing_item_of_a_generator_names_its_index(backend: str) -> None:
    with pytest.raises(Boom) as caught:
        list(mp.imap(fail_on_multiples_of_five, (x for x in range(1, 20)), chunksize=3, backend=backend))
    assert caught.value.code == 5
    assert any("item 4 (5)" in note for note in caught.value.__notes__)


def _ten_rows_then_a_failed_read() -> Iterator[int]:
    yield from range(10)
    raise Boom(99, "the input failed after ten rows")


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
@pytest.mark.parametrize("loop", ["for", "async for"])
@pytest.mark.parametrize("chunksize", [None, 3])
def test_imap_hands_out_the_results_of_the_items_read_before_its_input_failed(
    loop: str, ordered: bool, chunksize: int | None, backend: str
) -> None:
    # As map() does: the items read before the input raised run, and their
    # results come out before its error; they were lost with it.
    got: list[int] = []

    async def collect() -> None:
        async for result in mp.imap(
            triple_plus_one, _ten_rows_then_a_failed_read(), chunksize=chunksize, ordered=ordered, backend=backend
        ):
            got.append(result)

    with pytest.raises(Boom) as caught:
        if loop == "for":
            for result in mp.imap(
                triple_plus_one, _ten_rows_then_a_failed_read(), chunksize=chunksize, ordered=ordered, backend=backend
            ):
                got.append(result)
        else:
            asyncio.run(collect())
    assert caught.value.code == 99
    expected = [triple_plus_one(x) for x in range(10)]
    assert (got if ordered else sorted(got)) == expected


@pytest.mark.timeout(30)
def test_async_imap_in_order_hands_out_the_chunks_that_ended_before_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    # As a `for` loop, and `async for` out of order, do. The wait for a chunk that had ended
    # timed out all the same, its wake-up due a turn of the loop later, and the map ended
    # with TaskTimeoutError, the results of the chunks that had ended lost.
    clock = FakeClock()
    monkeypatch.setattr(_map, "time", types.SimpleNamespace(perf_counter=time.perf_counter, monotonic=clock.read))
    got: list[int] = []

    async def collect() -> None:
        # The "sync" backend ran each chunk as the map sent it, all of them at its start.
        async for result in mp.imap(triple_plus_one, range(3), chunksize=1, backend="sync", timeout=10):
            got.append(result)
            clock.work(60)  # the consumer took longer than the map's timeout

    asyncio.run(collect())
    assert got == [triple_plus_one(x) for x in range(3)]


@pytest.mark.parametrize(
    ("on_error", "expected"),
    [
        ("skip", [x for x in range(23) if x % 5]),
        ("none", [None if x % 5 == 0 else x for x in range(23)]),
    ],
)
@pytest.mark.parametrize("chunksize", [None, 1, 4, 50])
def test_skip_and_none(backend: str, on_error: str, expected: list[Any], chunksize: int | None) -> None:
    got = mp.parallel_map(
        fail_on_multiples_of_five, range(23), chunksize=chunksize, on_error=on_error, backend=backend  # type: ignore[arg-type]
    )
    assert got == expected
    lazy = mp.imap(
        fail_on_multiples_of_five, range(23), chunksize=chunksize, on_error=on_error, ordered=False, backend=backend  # type: ignore[arg-type]
    )
    assert sorted(lazy, key=lambda v: -1 if v is None else v) == sorted(
        expected, key=lambda v: -1 if v is None else v
    )


def test_skip_when_everything_fails(backend: str) -> None:
    assert mp.parallel_map(fail_on_multiples_of_five, [0, 5, 10], on_error="skip", backend=backend) == []


# -- chunk sizes -------------------------------------------------------------------------------

UNLIMITED = 10**9


def test_a_known_length_starts_with_one_item_per_worker_then_waits_for_a_measure() -> None:
    sizer = _ChunkSizer(None, 1000, workers=4, limit=UNLIMITED)
    assert [sizer.next_size() for _ in range(6)] == [1, 1, 1, 1, 0, 0]
    sizer.observe(1, 0.5, remaining=996)
    assert sizer.next_size() == 1  # slow items stay one per chunk


def test_cheap_items_get_chunks_of_their_measured_time_up_to_pool_maps_size() -> None:
    sizer = _ChunkSizer(None, 10_000_000, workers=2, limit=UNLIMITED)
    sizer.observe(1, 1e-6, remaining=9_999_998)  # a first item of 1 us: 250,000 make 25 times 10 ms
    assert sizer.next_size() == 250_000
    sizer.observe(10_000, 1e-3, remaining=9_900_000)  # 0.1 us: 100,000 make 10 ms
    assert sizer.next_size() == 100_000
    sizer.observe(100_000, 5e-4, remaining=9_000_000)  # 5 ns: 2,000,000, over 10,000,000 / (4 * 2)
    assert sizer.next_size() == 1_250_000


def test_only_chunks_of_one_item_measured_before_any_larger_one_get_the_slack() -> None:
    sizer = _ChunkSizer(None, 1_000, workers=2, limit=UNLIMITED)
    sizer.observe(1, 50e-3, remaining=998)  # the two first items, of 50 ms: 5 make 25 times 10 ms
    sizer.observe(1, 50e-3, remaining=998)
    assert sizer.next_size() == 5
    sizer.observe(5, 250e-3, remaining=990)  # 50 ms an item, measured: one item makes 10 ms
    assert sizer.next_size() == 1
    sizer.observe(1, 50e-3, remaining=989)  # a chunk of one slow item, not of a task's fixed cost
    assert sizer.next_size() == 1  # not 5 (250 ms) again, every other chunk


def test_the_rest_of_a_small_map_goes_in_one_chunk_per_worker() -> None:
    sizer = _ChunkSizer(None, 100, workers=2, limit=UNLIMITED)
    sizer.observe(1, 200e-6, remaining=98)  # 1,250 items make 250 ms (a first item): the 98 left fit in two chunks
    assert [sizer.next_size(), sizer.next_size()] == [49, 49]
    sizer.observe(49, 1e-3, remaining=0)
    assert sizer.next_size() == 49  # not split again and again


def test_the_rest_is_not_split_when_it_is_much_work() -> None:
    sizer = _ChunkSizer(None, 10_000, workers=2, limit=UNLIMITED)
    sizer.observe(1, 500e-6, remaining=9_998)  # 500 items make 250 ms (a first item); 4,999 would be 2.5 s
    assert sizer.next_size() == 500
    sizer.observe(500, 5e-3, remaining=4_000)  # 1,000 make 10 ms: 2,000 per worker would be 20 ms
    assert sizer.next_size() == 1_000


def test_chunks_stay_under_the_read_ahead_limit() -> None:
    sizer = _ChunkSizer(None, 1_000_000, workers=2, limit=300)
    sizer.observe(1, 1e-7, remaining=999_998)
    assert sizer.next_size() == 300


def test_an_unknown_length_grows_at_most_twofold_per_chunk() -> None:
    sizer = _ChunkSizer(None, None, workers=2, limit=UNLIMITED)
    assert [sizer.next_size() for _ in range(6)] == [1] * 6  # no length: no share to wait for
    sizer.observe(1, 1e-7, remaining=None)
    assert sizer.next_size() == 2
    sizer.observe(2, 2e-7, remaining=None)
    assert sizer.next_size() == 4
    sizer.observe(4, 0.4, remaining=None)  # slower items: smaller at once
    assert sizer.next_size() == 1


def test_an_unknown_length_takes_no_slack_from_one_item_probes() -> None:
    sizer = _ChunkSizer(None, None, workers=2, limit=UNLIMITED)
    for _ in range(6):  # the probes in flight end one by one, each item 10 ms
        sizer.observe(1, 0.01, remaining=None)
    assert sizer.next_size() == 1  # 10 ms items make chunks of one, not 25 (250 ms)


def test_a_fixed_chunksize_is_kept() -> None:
    sizer = _ChunkSizer(7, 1000, workers=2, limit=UNLIMITED)
    sizer.observe(7, 1e-6, remaining=993)
    assert [sizer.next_size() for _ in range(3)] == [7, 7, 7]


def test_a_first_wave_splits_the_items_between_the_workers_under_a_budget() -> None:
    sizer = _ChunkSizer(None, 1000, workers=4, limit=UNLIMITED, first_wave=True)
    assert sizer.budget == _FIRST_WAVE_SECONDS
    assert [sizer.next_size() for _ in range(6)] == [250, 250, 250, 250, 0, 0]
    sizer.observe(250, 1e-3, remaining=0)  # cheap items: the measure ends the budget
    assert sizer.budget is None
    assert sizer.next_size() > 0


def test_a_first_wave_stays_under_the_read_ahead_limit_and_the_largest_chunk() -> None:
    assert _ChunkSizer(None, 100_000, workers=2, limit=300, first_wave=True).next_size() == 300
    assert _ChunkSizer(None, 10**8, workers=2, limit=UNLIMITED, first_wave=True).next_size() == _MAX_CHUNK


@pytest.mark.parametrize(("chunksize", "total"), [(7, 1000), (None, None)], ids=["fixed chunksize", "unknown length"])
def test_no_first_wave_for_a_fixed_chunksize_or_an_unknown_length(chunksize: int | None, total: int | None) -> None:
    sizer = _ChunkSizer(chunksize, total, workers=2, limit=UNLIMITED, first_wave=True)
    assert sizer.budget is None
    assert sizer.next_size() == (chunksize or 1)


def test_the_rest_of_a_stopped_chunk_is_sized_by_the_measure_not_by_the_last_wave() -> None:
    sizer = _ChunkSizer(None, 1000, workers=2, limit=UNLIMITED, first_wave=True)
    sizer.observe(999, 0.02, remaining=0)  # stopped one item short: every item is read, the share is one
    assert sizer.next_size() == 1
    assert sizer.measured_size == 125  # 500 items make 10 ms, over 1,000 / (4 * 2)
    sizer.observe(1, 0.05, remaining=0)  # a slow item stopped the other chunk at once
    assert sizer.measured_size == 1


def test_a_first_wave_chunk_stopped_after_one_item_gets_no_slack() -> None:
    sizer = _ChunkSizer(None, 1000, workers=2, limit=UNLIMITED, first_wave=True)
    sizer.observe(1, 50e-3, remaining=998)  # one item of 50 ms overran the budget: it is slow, not a fixed cost
    assert sizer.next_size() == 1  # not the 5 (250 ms) an imap's one-item probe would allow


class FakeClock:
    """``time.perf_counter`` for the chunks of a map: it moves only when an item says it worked."""

    def __init__(self) -> None:
        self.now = 0.0

    def read(self) -> float:
        return self.now

    def work(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def chunk_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(_chunk_task, "time", types.SimpleNamespace(perf_counter=clock.read, monotonic=time.monotonic))
    return clock


def test_a_chunk_stops_at_its_budget_between_items(chunk_clock: FakeClock) -> None:
    def item_of_15_ms(x: int) -> int:
        chunk_clock.work(0.015)
        return x

    assert run_chunk(item_of_15_ms, range(100), 0, False, 0.02) == [0, 1]  # 15 ms, then 30 ms: past the budget
    assert run_chunk(item_of_15_ms, range(100), 0, False) == list(range(100))  # no budget: every item


def test_a_chunk_past_its_budget_finishes_when_little_is_left(chunk_clock: FakeClock) -> None:
    def item_of_2_4_ms(x: int) -> int:
        chunk_clock.work(0.0024)
        return x

    # Nine items make 21.6 ms: with 91 left the chunk stops; with one left (2.4 ms) it finishes.
    assert run_chunk(item_of_2_4_ms, range(100), 0, False, 0.02) == list(range(9))
    assert run_chunk(item_of_2_4_ms, range(10), 0, False, 0.02) == list(range(10))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("entry", ["parallel_map", "imap"])
def test_a_map_on_the_sync_backend_times_out_between_its_chunks(entry: str) -> None:
    # Each chunk runs inline, to its end, where the map starts it: nothing else
    # sees the deadline pass, and the map used to run all 40 items (2 s).
    ran: list[int] = []

    def item_of_50_ms(x: int) -> int:
        ran.append(x)
        time.sleep(0.05)
        return x

    with pytest.raises(mp.TaskTimeoutError, match="the map timed out after 0.2 s"):
        if entry == "parallel_map":
            mp.parallel_map(item_of_50_ms, range(40), backend="sync", timeout=0.2)
        else:
            list(mp.imap(item_of_50_ms, range(40), backend="sync", timeout=0.2))
    assert len(ran) < 20, ran  # four items make the 0.2 s, a chunk holds ten at most; then none starts
    assert ran == list(range(len(ran)))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("entry", ["parallel_map", "imap", "async imap"])
@pytest.mark.parametrize(
    ("items", "chunksize"), [(1, None), (3, 5), (4, 2)], ids=["one item", "one chunk", "the last of two chunks"]
)
def test_a_map_on_the_sync_backend_times_out_in_its_last_chunk(
    entry: str, items: int, chunksize: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The deadline was looked at only before each chunk: where the rest of the input fitted
    # one chunk, none came after the one that ran past it, and the map returned its results.
    clock = FakeClock()
    monkeypatch.setattr(_map, "time", types.SimpleNamespace(perf_counter=time.perf_counter, monotonic=clock.read))

    def the_last_works_past_the_deadline(x: int) -> int:
        if x == items - 1:
            clock.work(60)
        return x

    async def collect() -> list[int]:
        return [x async for x in mp.imap(the_last_works_past_the_deadline, range(items), **options)]

    options: dict[str, Any] = {"chunksize": chunksize, "backend": "sync", "timeout": 10}
    with pytest.raises(mp.TaskTimeoutError, match="the map timed out after 10 s"):
        if entry == "parallel_map":
            mp.parallel_map(the_last_works_past_the_deadline, range(items), **options)
        elif entry == "imap":
            list(mp.imap(the_last_works_past_the_deadline, range(items), **options))
        else:
            asyncio.run(collect())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("over", ["a list read to its end", "a longer list", "an iterator"])
def test_a_map_that_times_out_says_how_many_items_ended_were_in_flight_and_never_started(over: str) -> None:
    # It said that the rest of the input was not read, of a list read to its end, and took
    # the items in flight for all the map had not done.
    gate = threading.Event()

    def item(x: int) -> int:
        if x >= 3:
            gate.wait(30)
        return x

    total = 6 if over == "a list read to its end" else 200
    items: Any = list(range(total)) if over != "an iterator" else iter(range(total))
    try:
        with pytest.raises(mp.TaskTimeoutError) as raised:
            mp.parallel_map(item, items, backend="thread", chunksize=1, timeout=0.5)
    finally:
        gate.set()
    message = str(raised.value)
    counts = re.search(r"with (\d+) item\(s\) done: the (\d+) in flight timed out with it", message)
    assert counts is not None, message
    done, in_flight = map(int, counts.groups())
    assert done <= 3 and in_flight >= 1, message
    if over == "a list read to its end":
        assert done + in_flight == total and " were cut off" in message and "never started" not in message, message
    elif over == "a longer list":
        assert message.endswith(f", and the other {total - done - in_flight} never started"), message
    else:
        assert message.endswith(", and the rest of the input was not read"), message


_SEVEN_RELEASED = threading.Event()


def hang_at_seven(x: int) -> int:
    if x == 7:
        assert _SEVEN_RELEASED.wait(60)
    return x


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_timed_out_map_counts_the_chunks_that_ended_behind_the_one_that_hangs(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The second chunk ended before the deadline, its results waiting behind the first
    # chunk's, whose item 7 hangs: the message said "the 20 in flight timed out", as if none had.
    # The map waits for its head chunk only once the second chunk ended, however long a
    # cold worker takes to run it: past the deadline by then, the map times out at once.
    _SEVEN_RELEASED.clear()
    second_ended = threading.Event()

    def listen(event: mp.TaskEvent) -> None:
        if event.kind == "finished" and event.status == "succeeded":
            second_ended.set()

    if backend == "thread":
        mp.configure_thread_pool(2)
    else:
        mp.configure_process_pool(2)
    # Warm, so that the deadline does not pass as the second chunk is sent.
    assert mp.parallel_map(hang_at_seven, [0, 1], backend=backend, chunksize=1) == [0, 1]
    remaining = _map._Mapper._remaining

    def remaining_once_the_second_chunk_ended(mapper: Any) -> float | None:
        assert second_ended.wait(30)
        return remaining(mapper)

    monkeypatch.setattr(_map._Mapper, "_remaining", remaining_once_the_second_chunk_ended)
    mp.add_task_listener(listen)
    try:
        with pytest.raises(mp.TaskTimeoutError) as raised:
            mp.parallel_map(hang_at_seven, range(20), backend=backend, chunksize=10, timeout=1)
    finally:
        mp.remove_task_listener(listen)
        _SEVEN_RELEASED.set()  # (a worker process has its own, never set: the map's timeout stops it)
    message = str(raised.value)
    assert message.endswith(
        "with 0 item(s) done: the 20 in flight timed out with it: "
        "10 had ended and lose their results, 10 were cut off (running: items 0-9)"
    ), message


def cheap_then_slow(clock: FakeClock, cheap: int) -> Any:
    """A function of items: those under ``cheap`` take 1 us on ``clock``, the others 15 ms."""

    def item(x: int) -> int:
        clock.work(1e-6 if x < cheap else 0.015)
        return x

    return item


def test_cheap_items_do_not_carry_a_chunk_far_past_its_budget(chunk_clock: FakeClock) -> None:
    # Ten cheap items would size the next slice to a millisecond of them (the
    # whole chunk), and its slow items would all run past the budget in it. The
    # slices under a budget at most double what the chunk ran: 1, 1, 2, 4, then 8
    # (items 8 to 15, the slow ones from 10 on), after which the chunk stops.
    assert run_chunk(cheap_then_slow(chunk_clock, 10), range(100), 0, False, 0.02) == list(range(16))


def slow_and_failing(clock: FakeClock, failing: frozenset[int]) -> Any:
    """A function of items that each take 15 ms on ``clock`` and raise for those in ``failing``."""

    def slow_item(x: int) -> int:
        clock.work(0.015)
        if x in failing:
            raise ValueError(f"bad item {x}")
        return x

    return slow_item


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ordered", [True, False])
def test_a_map_whose_first_chunks_stop_at_their_budget_loses_no_item(chunk_clock: FakeClock, ordered: bool) -> None:
    failing = frozenset(range(0, 200, 7))
    fn = slow_and_failing(chunk_clock, failing)
    name = f"{fn.__qualname__} [map]"
    before = mp.get_metrics(name)
    results = mp.parallel_map(fn, range(200), backend="thread", on_error="none", ordered=ordered)
    expected = [None if x in failing else x for x in range(200)]
    if ordered:
        assert results == expected
    else:
        none_first = functools.partial(sorted, key=lambda r: -1 if r is None else r)
        assert none_first(results) == none_first(expected)
    after = mp.get_metrics(name)
    assert after is not None
    chunks = after.total_tasks - (0 if before is None else before.total_tasks)
    assert chunks > mp.get_thread_pool_info()["num_threads"], "no first chunk stopped at its budget"


@pytest.mark.timeout(60)
def test_an_error_after_a_first_chunk_stopped_names_its_item(chunk_clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="bad item 63") as caught:
        mp.parallel_map(slow_and_failing(chunk_clock, frozenset({63})), range(200), backend="thread")
    assert any("item 63 " in note for note in caught.value.__notes__)


@pytest.mark.timeout(60)
def test_slow_items_give_every_worker_one_at_once(gate: threading.Event) -> None:
    workers = 4
    mp.configure_thread_pool(workers)
    running: set[int] = set()
    changed = threading.Condition()

    def slow(x: int) -> int:
        with changed:
            running.add(threading.get_ident())
            changed.notify_all()
        gate.wait()  # the work of a slow item, until the test has looked
        return x

    results: list[int] = []
    runner = threading.Thread(target=lambda: results.extend(mp.parallel_map(slow, range(400), backend="thread")))
    runner.start()
    with changed:
        all_busy = changed.wait_for(lambda: len(running) == workers, timeout=30)
    gate.set()
    runner.join(60)
    assert all_busy, f"only {len(running)} of {workers} workers got an item"
    assert results == list(range(400))


@pytest.mark.timeout(60)
def test_the_first_result_of_a_map_comes_after_its_first_item(gate: threading.Event) -> None:
    def slow_after_the_first(x: int) -> int:
        if x:
            gate.wait()
        return x

    iterator = mp.imap(slow_after_the_first, range(1000), timeout=30, backend="thread")
    try:
        assert next(iterator) == 0  # a first chunk of more items would wait for the gate, then time out
    finally:
        gate.set()
        iterator.close()


# -- laziness and memory ---------------------------------------------------------------------


def test_imap_reads_nothing_before_the_first_result_is_asked_for() -> None:
    source = Counted()
    iterator = mp.imap(triple_plus_one, source)
    assert source.pulled == 0
    assert next(iterator) == 1
    iterator.close()


def test_an_imap_closed_before_its_first_result_reads_no_input_and_runs_nothing(backend: str) -> None:
    # As a generator closed before its first next(). close() did nothing until the map had
    # started, and a loop over the closed imap afterwards read the input and ran every item.
    pulled: list[int] = []

    def source() -> Iterator[int]:
        for x in range(5):
            pulled.append(x)
            yield x

    iterator = mp.imap(triple_plus_one, source(), backend=backend)
    iterator.close()
    assert list(iterator) == []
    iterator.close()  # closing again is harmless, as for a generator

    async def collect() -> list[int]:
        closed = mp.imap(triple_plus_one, source(), backend=backend)
        closed.close()
        return [result async for result in closed]

    assert asyncio.run(collect()) == []
    assert pulled == []


_RELEASE = threading.Event()  # never set in a worker process: its items wait until cancelled


def held_from_five(x: int) -> int:
    """``x``, from item 5 on once released or cancelled (a thread's code must stop by itself)."""
    if x >= 5:
        while not _RELEASE.wait(0.01):
            mp.check_cancelled()
    return x


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process", "sync"])
def test_an_imap_closed_from_another_thread_ends_its_loop_and_its_chunks(backend: str) -> None:
    # close() raised "generator already executing" there, and the map went on: over an
    # endless input, for good. As with a generator, only the thread iterating could close it.
    _RELEASE.clear()
    iterator = mp.imap(held_from_five, itertools.count(), chunksize=1, max_in_flight=1, backend=backend)
    got: list[int] = []
    reader = threading.Thread(target=lambda: got.extend(iterator))
    reader.start()
    try:
        # And item 5's chunk in flight, which holds it there: a look between item 4 handed out
        # and that chunk's submission found none in flight (1 run in 40 under load).
        assert wait_until(
            lambda: len(got) == 5
            and iterator._results is not None
            and iterator._results.gi_running
            and (backend == "sync" or bool(iterator._mapper._chunks_in_flight()))
        )
        handles = iterator._mapper._chunks_in_flight()
        iterator.close()
        if backend == "sync":  # item 5 runs in the reader's thread, as the map starts its chunk
            _RELEASE.set()
        reader.join(30)
        assert not reader.is_alive(), "the loop over the imap went on after close()"
        assert got == [0, 1, 2, 3, 4]
        assert all(handle.is_ready() for handle in handles)
        assert handles or backend == "sync"  # (there item 5's chunk runs before it is in flight)
    finally:
        iterator.close()
        _RELEASE.set()
        reader.join(30)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process", "sync"])
@pytest.mark.parametrize("ordered", [True, False])
def test_an_imap_closed_by_its_own_progress_callback_ends_after_the_chunk_it_counted(backend: str, ordered: bool) -> None:
    # The callback runs in the reading thread, inside the map's generator: closing that
    # generator raised "generator already executing", and the map went on.
    iterator: mp.MapIterator[int] | None = None

    def stop_at_three(done: int, total: int | None) -> None:
        if done == 3:
            assert iterator is not None
            iterator.close()

    iterator = mp.imap(
        int, itertools.count(), chunksize=1, max_in_flight=1, progress=stop_at_three, ordered=ordered, backend=backend
    )
    got = list(itertools.islice(iterator, 100))
    assert got == [0, 1, 2]
    assert list(iterator) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process", "sync"])
def test_an_imap_handed_to_another_thread_is_closed_from_the_thread_that_began_it(backend: str) -> None:
    # close() from the thread that asked for the first result closed the generator
    # the other thread was running: "generator already executing", and the map went on.
    _RELEASE.clear()
    iterator = mp.imap(held_from_five, itertools.count(), chunksize=1, max_in_flight=1, backend=backend)
    got = [next(iterator)]
    reader = threading.Thread(target=lambda: got.extend(iterator))
    reader.start()
    try:
        assert wait_until(lambda: len(got) == 5 and iterator._results is not None and iterator._results.gi_running)
        iterator.close()
        if backend == "sync":  # item 5 runs in the reader's thread
            _RELEASE.set()
        reader.join(30)
        assert not reader.is_alive(), "the loop over the imap went on after close()"
        assert got == [0, 1, 2, 3, 4]
    finally:
        _RELEASE.set()
        reader.join(30)
        iterator.close()


_FIRST_HELD = threading.Event()


def held_at_zero(x: int) -> int:
    """``x``; item 0 waits for ``_FIRST_HELD`` (set by the test that clears it)."""
    if x == 0:
        assert _FIRST_HELD.wait(30), "the test never released item 0"
    return x


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync"])
@pytest.mark.parametrize("ordered", [True, False])
def test_an_imap_read_by_two_threads_at_once_says_so_and_loses_nothing(backend: str, ordered: bool) -> None:
    # A second thread's next() as the first waited in its own raised ValueError("generator
    # already executing"), of a generator the program never made.
    _FIRST_HELD.clear()
    iterator = mp.imap(held_at_zero, range(3), chunksize=1, max_in_flight=1, ordered=ordered, backend=backend)
    first: list[Any] = []
    reader = threading.Thread(target=lambda: first.append(next(iterator)))
    reader.start()
    try:
        assert wait_until(lambda: iterator._results is not None and iterator._results.gi_running)
        with pytest.raises(RuntimeError, match=r"imap\(\) is being read by another next\(\).*one thread at a time"):
            next(iterator)
    finally:
        _FIRST_HELD.set()
        reader.join(30)
    assert not reader.is_alive()
    assert first == [0]
    assert list(iterator) == [1, 2]


@pytest.mark.timeout(60)
def test_an_imap_first_read_by_two_threads_at_once_starts_its_map_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two threads' first next() at once each found no generator yet and made one: the map ran
    # twice, an item came twice, and the second generator's chunks() raised KeyError.
    iterator = mp.imap(abs, range(3), chunksize=1, backend="thread")
    each = _map._each
    second: list[Any] = []

    def each_as_another_thread_reads(chunks: Any) -> Any:
        monkeypatch.setattr(_map, "_each", each)
        second.append(in_thread(lambda: next(iterator)))  # while this first next() makes its generator
        return each(chunks)

    monkeypatch.setattr(_map, "_each", each_as_another_thread_reads)
    assert next(iterator) == 0
    assert isinstance(second[0], RuntimeError), second
    assert "one thread at a time" in str(second[0])
    assert list(iterator) == [1, 2]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("first", ["next", "async for"])
def test_an_imap_first_read_both_ways_at_once_starts_its_map_once(first: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A first next() on one thread and a first `async for` on another at once each found no
    # generator of the other yet and made their own, on the one map: the second took every item,
    # and the first read ended at once with none, neither told.
    ran: list[int] = []

    def record(item: int) -> int:
        ran.append(item)
        return item

    iterator = mp.imap(record, range(3), chunksize=1, backend="thread")

    async def read_async() -> list[int]:
        return [item async for item in iterator]

    def read(way: str) -> Any:
        return list(iterator) if way == "next" else asyncio.run(read_async())

    name = "_each" if first == "next" else "_each_async"
    each = getattr(_map, name)
    second: list[Any] = []

    def each_as_another_thread_reads(*args: Any) -> Any:
        monkeypatch.setattr(_map, name, each)
        # while this first read makes its generator
        second.append(in_thread(lambda: read("async for" if first == "next" else "next")))
        return each(*args)

    monkeypatch.setattr(_map, name, each_as_another_thread_reads)
    assert read(first) == [0, 1, 2]
    assert isinstance(second[0], RuntimeError), second
    assert sorted(ran) == [0, 1, 2]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("read", ["next", "async for"])
def test_an_imap_closed_as_its_first_read_starts_it_never_starts(read: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # close() on another thread as the first next() (or async for) made the map's generator found
    # none yet and marked the imap closed unstarted; the first read then put its own generator in
    # place, and the map ran to its end after close(), which said it would never start.
    ran: list[int] = []

    def record(item: int) -> int:
        ran.append(item)
        return item

    iterator = mp.imap(record, range(3), chunksize=1, backend="thread")
    name = "_each" if read == "next" else "_each_async"
    each = getattr(_map, name)
    closed: list[Any] = []

    def each_as_another_thread_closes(*args: Any) -> Any:
        monkeypatch.setattr(_map, name, each)
        closed.append(in_thread(iterator.close))  # while this first read makes its generator
        return each(*args)

    monkeypatch.setattr(_map, name, each_as_another_thread_closes)
    if read == "next":
        got = list(iterator)
    else:

        async def main() -> list[int]:
            return [item async for item in iterator]

        got = asyncio.run(main())
    assert closed == [None]
    assert got == [], "the imap gave results after close()"
    assert ran == [], "the map ran after close()"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process", "sync"])
@pytest.mark.parametrize("closed_by", ["the thread that began it", "the thread it was handed to"])
def test_an_imap_handed_to_another_thread_gives_nothing_more_after_close_on_any_thread(
    backend: str, closed_by: str
) -> None:
    # The thread it was handed to closed it: that thread's next() went on with
    # the rest of the chunk it held (items 2 to 9), on every thread.
    iterator = mp.imap(int, range(100), chunksize=10, backend=backend)
    assert next(iterator) == 0
    assert in_thread(lambda: next(iterator)) == 1
    if closed_by == "the thread that began it":
        iterator.close()
    else:
        in_thread(iterator.close)
    assert isinstance(in_thread(lambda: next(iterator)), StopIteration)
    with pytest.raises(StopIteration):
        next(iterator)
    assert list(iterator) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process", "sync"])
@pytest.mark.parametrize("closed_by", ["the thread that began it", "another thread"])
def test_a_next_as_the_imap_is_closed_raises_stop_iteration(
    backend: str, closed_by: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The next() comes from another thread as the close cancels the chunks. Closed by
    # the thread that began it, which closes the map's generator, it raised ValueError
    # ("generator already executing"); closed by another, it gave the next item.
    closing, asked = threading.Event(), threading.Event()
    cancel = _map.cancel_and_stop

    def cancel_as_another_thread_asks(handles: Any, *args: Any) -> None:
        closing.set()
        assert asked.wait(30)
        cancel(handles, *args)

    def ask() -> Any:
        assert closing.wait(30)
        try:
            return in_thread(lambda: next(iterator))
        finally:
            asked.set()

    iterator = mp.imap(int, range(100), chunksize=10, backend=backend)
    assert next(iterator) == 0
    monkeypatch.setattr(_map, "cancel_and_stop", cancel_as_another_thread_asks)
    if closed_by == "the thread that began it":
        outcome: list[Any] = []
        asker = threading.Thread(target=lambda: outcome.append(ask()))
        asker.start()
        try:
            iterator.close()
        finally:
            asked.set()
            asker.join(30)
        assert outcome
        outcome_seen = outcome[0]
    else:
        closer = threading.Thread(target=iterator.close)
        closer.start()
        try:
            outcome_seen = ask()
        finally:
            closer.join(30)
    assert isinstance(outcome_seen, StopIteration), repr(outcome_seen)
    with pytest.raises(StopIteration):
        next(iterator)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process", "sync"])
def test_an_imap_read_with_async_for_gives_nothing_more_after_close_however_large_its_chunk(backend: str) -> None:
    # The loop went on with the rest of the chunk it held: items 3 to 9.
    async def read() -> list[int]:
        iterator = mp.imap(int, range(100), chunksize=10, backend=backend)
        got: list[int] = []
        async for x in iterator:
            got.append(x)
            if x == 2:
                iterator.close()
        return got

    assert asyncio.run(read()) == [0, 1, 2]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process", "sync"])
@pytest.mark.parametrize("ordered", [True, False])
def test_an_imap_read_with_async_for_stops_at_close(backend: str, ordered: bool) -> None:
    # close() did nothing to an imap read with `async for`: the map went on, for good over an endless input.
    async def read() -> list[int]:
        iterator = mp.imap(int, itertools.count(), chunksize=1, max_in_flight=1, ordered=ordered, backend=backend)
        got: list[int] = []
        async for x in iterator:
            got.append(x)
            if x == 2:
                iterator.close()
            if len(got) == 100:
                break
        return got

    assert asyncio.run(read()) == [0, 1, 2]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process"])
@pytest.mark.parametrize("ordered", [True, False])
def test_an_imap_read_with_async_for_stops_at_a_close_from_another_thread(backend: str, ordered: bool) -> None:
    # Before or as the loop awaits item 5 (held until cancelled), the close ends the loop and cancels it.
    _RELEASE.clear()
    closer: list[threading.Thread] = []

    async def read() -> list[int]:
        iterator = mp.imap(held_from_five, itertools.count(), chunksize=1, max_in_flight=1, ordered=ordered, backend=backend)
        got: list[int] = []
        async for x in iterator:
            got.append(x)
            if x == 4:
                closer.append(threading.Thread(target=iterator.close))
                closer[0].start()
        return got

    try:
        assert asyncio.run(asyncio.wait_for(read(), 30)) == [0, 1, 2, 3, 4]
    finally:
        _RELEASE.set()
        for thread in closer:
            thread.join(30)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("chunksize", [None, 1, 50])
def test_imap_over_an_endless_generator_stays_bounded(backend: str, chunksize: int | None) -> None:
    source = Counted()
    iterator = mp.imap(triple_plus_one, source, max_in_flight=100, chunksize=chunksize, backend=backend)
    try:
        got = list(itertools.islice(iterator, 10))
        assert got == [triple_plus_one(x) for x in range(10)]
        assert source.pulled <= 10 + 100, f"pulled {source.pulled} items to hand out 10"
    finally:
        iterator.close()


@pytest.mark.timeout(20)
def test_imap_keeps_reading_while_results_are_consumed() -> None:
    source = Counted()
    iterator = mp.imap(triple_plus_one, source, max_in_flight=16)
    try:
        for expected, got in zip(range(5000), iterator):
            assert got == triple_plus_one(expected)
        assert source.pulled <= 5000 + 16
    finally:
        iterator.close()


# -- read-ahead in bytes ---------------------------------------------------------------------------

KIB = 1024
MIB = 1024 * KIB


class Claims:
    """An item that reports ``size`` bytes to ``sys.getsizeof`` and holds almost none.

    It lets a test read ahead gigabytes' worth of items without allocating them.
    """

    __slots__ = ("index", "size")

    def __init__(self, index: int, size: int) -> None:
        self.index = index
        self.size = size

    def __sizeof__(self) -> int:
        return self.size


def index_of(item: Any) -> int:
    return int(item.index if isinstance(item, Claims) else item[0])


class Ahead:
    """Items of a claimed size, recording how far reading ran ahead of the consumer."""

    def __init__(self, size: int, wrap: bool = False) -> None:
        self.size = size
        self.wrap = wrap
        self.read = 0
        self.consumed = 0
        self.most_ahead = 0

    def __iter__(self) -> Iterator[Any]:
        for i in itertools.count():
            self.read += 1
            self.most_ahead = max(self.most_ahead, self.read - self.consumed)
            item = Claims(i, self.size)
            yield (i, item) if self.wrap else item

    def consume(self, results: Iterator[int], count: int) -> None:
        for expected in range(count):
            assert next(results) == expected
            self.consumed += 1


class SizedAhead(Ahead):
    """:class:`Ahead` with a length, whose items count as consumed when the map's function runs.

    ``first_size``, if given, is what the first item claims instead of ``size``.
    """

    def __init__(self, size: int, length: int, first_size: int | None = None) -> None:
        super().__init__(size)
        self.length = length
        self.first_size = first_size
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Any]:
        for item in itertools.islice(super().__iter__(), self.length):
            if item.index == 0 and self.first_size is not None:
                item.size = self.first_size
            yield item

    def run(self, item: Claims) -> int:
        with self.lock:
            self.consumed += 1
        return item.index


@pytest.mark.timeout(60)
@pytest.mark.parametrize("wrap", [False, True], ids=["items", "tuples holding them"])
@pytest.mark.parametrize("ordered", [True, False])
def test_default_read_ahead_of_large_items_stays_under_the_byte_budget(wrap: bool, ordered: bool) -> None:
    """The field report: 64 KiB items passed 2 GiB read ahead of a slow consumer."""
    source = Ahead(64 * KIB, wrap)
    results = mp.imap(index_of, source, ordered=ordered)
    try:
        if ordered:
            source.consume(results, 20_000)
        else:
            for _ in range(20_000):
                next(results)
                source.consumed += 1
    finally:
        results.close()
    budget_items = DEFAULT_MAX_BYTES_IN_FLIGHT // (64 * KIB)
    assert source.most_ahead <= budget_items, f"{source.most_ahead} items of 64 KiB read ahead"
    assert source.most_ahead > mp.get_thread_pool_info()["num_threads"]  # still ahead: workers kept busy


Pair = collections.namedtuple("Pair", "index item")


class Fields(list):  # type: ignore[type-arg]
    """A list subclass, as a row type of a library may be."""


def index_field(row: Any) -> int:
    return int(row["index"] if isinstance(row, dict) else row[0])


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(Pair, id="namedtuple"),
        pytest.param(lambda index, item: Fields([index, item]), id="list subclass"),
        pytest.param(lambda index, item: collections.OrderedDict(index=index, item=item), id="OrderedDict"),
        pytest.param(lambda index, item: collections.defaultdict(int, index=index, item=item), id="defaultdict"),
    ],
)
def test_default_read_ahead_of_large_items_in_a_subclass_of_tuple_list_or_dict_stays_under_the_byte_budget(
    wrap: Any,
) -> None:
    # A namedtuple is a tuple (pandas' itertuples() gives them), an OrderedDict a dict: their
    # elements are sized as a tuple's or a dict's are, or 64 KiB rows count as a few dozen bytes.
    source = Ahead(64 * KIB)
    results = mp.imap(index_field, (wrap(item.index, item) for item in source))
    try:
        source.consume(results, 20_000)
    finally:
        results.close()
    budget_items = DEFAULT_MAX_BYTES_IN_FLIGHT // (64 * KIB)
    assert source.most_ahead <= budget_items, f"{source.most_ahead} items of 64 KiB read ahead"


@pytest.mark.timeout(60)
def test_a_parallel_map_reads_no_more_ahead_than_the_byte_budget_when_its_first_item_is_small() -> None:
    # Its first chunks are sized from the first item: they must not take in
    # half the items at once when the others are each 8 MiB.
    rows = SizedAhead(8 * MIB, 200, first_size=100)  # a header, then rows
    assert mp.parallel_map(rows.run, rows, backend="thread") == list(range(200))
    assert rows.most_ahead <= DEFAULT_MAX_BYTES_IN_FLIGHT // (8 * MIB), f"{rows.most_ahead} items of 8 MiB read ahead"


@pytest.mark.timeout(60)
def test_a_parallel_map_of_a_list_whose_first_item_is_small_sends_no_chunk_past_the_byte_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A list is sliced: its items are in memory already, but a chunk of them is
    # what a worker process receives, pickled, in one message.
    largest = 0
    start_chunk = _map._Mapper._submit_chunk  # every chunk a map submits

    def recorded(self: Any, items: Any, start: int, budget: float | None, *args: Any, **options: Any) -> Any:
        nonlocal largest
        largest = max(largest, len(items))
        return start_chunk(self, items, start, budget, *args, **options)

    monkeypatch.setattr(_map._Mapper, "_submit_chunk", recorded)
    rows = list(SizedAhead(8 * MIB, 200, first_size=100))
    assert mp.parallel_map(index_of, rows, backend="thread") == list(range(200))
    assert largest * 8 * MIB <= DEFAULT_MAX_BYTES_IN_FLIGHT // 2, f"a chunk of {largest} items of 8 MiB"


class GrowsLarge:
    """``small`` items of a few dozen bytes, then items that claim ``size`` bytes: bytes read ahead recorded."""

    def __init__(self, small: int, size: int, large: int) -> None:
        self.small = small
        self.size = size
        self.large = large
        self.ahead = 0  # bytes read and not yet consumed
        self.most_ahead = 0

    def size_of(self, index: int) -> int:
        return 0 if index < self.small else self.size

    def __iter__(self) -> Iterator[Any]:
        for i in range(self.small + self.large):
            self.ahead += self.size_of(i)
            self.most_ahead = max(self.most_ahead, self.ahead)
            yield Claims(i, self.size_of(i) or 40)

    def consume(self, results: Iterator[int], ordered: bool) -> None:
        seen = []
        for index in results:
            self.ahead -= self.size_of(index)
            seen.append(index)
        assert (seen if ordered else sorted(seen)) == list(range(self.small + self.large))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_a_read_ahead_stays_under_the_byte_budget_when_small_items_turn_large(backend: str, ordered: bool) -> None:
    # Cheap small items grow the chunks to tens of thousands of items; an input read in runs
    # that doubled read a run of that many of the large items that followed before sizing one:
    # 100,000 lines of a few bytes, then 1 MiB blobs, read 3 GiB ahead where 256 MiB was the bound.
    source = GrowsLarge(100_000, MIB, 2_000)
    results = mp.imap(index_of, source, backend=backend, ordered=ordered)
    try:
        source.consume(results, ordered)
    finally:
        results.close()
    assert source.most_ahead <= 1.5 * DEFAULT_MAX_BYTES_IN_FLIGHT, f"{source.most_ahead / MIB:.0f} MiB read ahead"


@pytest.mark.timeout(60)
def test_items_larger_than_the_budget_still_run_one_per_worker() -> None:
    workers = mp.get_thread_pool_info()["num_threads"]
    source = Ahead(DEFAULT_MAX_BYTES_IN_FLIGHT)  # each claims the whole budget
    results = mp.imap(index_of, source, backend="thread")
    try:
        source.consume(results, 50)
    finally:
        results.close()
    assert source.most_ahead <= workers + 1 + 1  # one per worker, one ready, and the first chunk


@pytest.mark.timeout(60)
def test_the_byte_budget_bounds_a_fixed_chunksize_after_the_first_chunk() -> None:
    source = Ahead(MIB)
    results = mp.imap(index_of, source, chunksize=1000)
    try:
        source.consume(results, 5000)
    finally:
        results.close()
    # The first chunk (read before any item was sized) plus the budget's worth.
    assert source.most_ahead <= 1000 + DEFAULT_MAX_BYTES_IN_FLIGHT // MIB


@pytest.mark.timeout(60)
def test_a_parallel_map_sizes_its_first_chunks_by_the_bytes_of_an_item() -> None:
    size = DEFAULT_MAX_BYTES_IN_FLIGHT // 100
    source = SizedAhead(size, 2000)  # half the items at once would be gigabytes
    assert mp.parallel_map(source.run, source, backend="thread") == list(range(2000))
    assert source.most_ahead <= DEFAULT_MAX_BYTES_IN_FLIGHT // size + 1, f"{source.most_ahead} items read ahead"


class UnsizedRow:
    """An item whose ``__sizeof__`` fails as ``how`` says; the map's function never asks for it."""

    def __init__(self, index: int, how: str) -> None:
        self.index = index
        self.how = how

    def __sizeof__(self) -> int:
        if self.how == "raises":
            raise RuntimeError("a proxy whose target is gone")
        return -1 if self.how == "negative" else "many"  # type: ignore[return-value]


def index_of_unsized(item: Any) -> int:
    return int(item.index if isinstance(item, UnsizedRow) else item[1].index)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync", "process"])
@pytest.mark.parametrize("how", ["raises", "negative", "not an int"])
@pytest.mark.parametrize("wrap", [False, True], ids=["items", "tuples holding them"])
@pytest.mark.parametrize("read", ["list", "iterator", "imap"])
def test_items_whose_sizeof_fails_are_mapped_under_the_default_byte_budget(
    backend: str, how: str, wrap: bool, read: str
) -> None:
    # The byte estimate calls each sampled item's __sizeof__ (sys.getsizeof), code the user never
    # asked to run: one that raised (a proxy, a lazy row) failed the whole map with its error, or
    # getsizeof's ValueError or TypeError, and no note; with max_in_flight given, the same items mapped.
    rows = [(i, UnsizedRow(i, how)) if wrap else UnsizedRow(i, how) for i in range(300)]
    if read == "imap":
        results = list(mp.imap(index_of_unsized, iter(rows), backend=backend))
    else:
        results = mp.parallel_map(index_of_unsized, rows if read == "list" else iter(rows), backend=backend)
    assert results == list(range(300))


@pytest.mark.timeout(60)
def test_an_explicit_max_in_flight_bounds_items_only() -> None:
    source = Ahead(MIB)
    results = mp.imap(index_of, source, chunksize=2000, max_in_flight=10_000)
    try:
        source.consume(results, 1)
    finally:
        results.close()
    assert source.most_ahead == 10_000  # five chunks of 2,000: the user's own bound, in items


def test_small_items_keep_the_item_bound() -> None:
    """Plain ints are tiny: the byte budget allows more than the default item bound."""
    source = Counted()
    results = mp.imap(triple_plus_one, source, chunksize=50_000)
    try:
        assert next(results) == 1
    finally:
        results.close()
    workers = mp.get_thread_pool_info()["num_threads"]
    assert source.pulled == 50_000 * (2 * workers + 2)  # every chunk slot filled at once


# -- ordering --------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_unordered_yields_results_as_they_arrive(gate: threading.Event) -> None:
    mp.configure_thread_pool(2)  # one worker each for item 0 and item 1
    item0_ended = threading.Event()

    def held_first(x: int) -> int:
        if x == 0:
            gate.wait(5)
            item0_ended.set()
        return x

    iterator = mp.imap(held_first, [0, 1], chunksize=1, ordered=False, backend="thread")
    first = next(iterator)
    item0_still_held = not item0_ended.is_set()
    gate.set()
    rest = list(iterator)
    assert first == 1 and rest == [0]
    assert item0_still_held, (
        "item 1 came out only after item 0 ended: the consuming thread ran the "
        "held chunk inline instead of yielding the result that had arrived"
    )


def test_ordered_yields_in_input_order_even_when_later_items_end_first(gate: threading.Event) -> None:
    mp.configure_thread_pool(2)
    later_done = threading.Event()

    def held_first(x: int) -> int:
        if x == 0:
            assert gate.wait(5)
        else:
            later_done.set()
        return x

    iterator = mp.imap(held_first, [0, 1, 2, 3], chunksize=1, backend="thread")

    def release_when_later_items_ran() -> None:
        later_done.wait(5)
        gate.set()

    releaser = threading.Thread(target=release_when_later_items_ran)
    releaser.start()
    try:
        assert list(iterator) == [0, 1, 2, 3]
    finally:
        gate.set()
        releaser.join(5)


# -- timeouts, early close, cancellation ---------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("ordered", [True, False])
def test_map_timeout_raises(gate: threading.Event, ordered: bool) -> None:
    def held(x: int) -> int:
        if x == 3:
            assert gate.wait(10)
        return x

    with pytest.raises(mp.TaskTimeoutError, match="timed out") as caught:
        mp.parallel_map(held, range(10), chunksize=1, timeout=0.2, ordered=ordered, backend="thread")
    assert isinstance(caught.value, TimeoutError)
    gate.set()
    assert wait_until_idle(5)
    assert mp.get_active_task_count() == 0


def stuck_for_good(x: int) -> int:
    """An item that never ends (a hung read): only a worker process's end stops it."""
    threading.Event().wait()
    return x


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ordered", [True, False])
def test_a_process_maps_timeout_replaces_the_workers_its_stuck_items_held(ordered: bool) -> None:
    # Its chunks in flight were cancelled, which a running item never sees: both workers
    # stayed busy after the map had ended, and the next map timed out waiting for them.
    mp.configure_process_pool(2)
    stopped = mp.get_process_pool_info()["worker_restart_reasons"].get("stopped", 0)
    with pytest.raises(mp.TaskTimeoutError, match="timed out"):
        mp.parallel_map(stuck_for_good, range(2), chunksize=1, timeout=0.5, ordered=ordered, backend="process")
    assert mp.parallel_map(triple_plus_one, range(8), timeout=30, backend="process") == [
        triple_plus_one(x) for x in range(8)
    ]
    # The map's own stop, not an incident: two maps that met their deadlines made a pool of two "degraded".
    assert wait_until(lambda: mp.get_process_pool_info()["worker_restart_reasons"].get("stopped", 0) == stopped + 2, 30)
    assert mp.get_process_pool_info()["restarts_in_window"] == 0


@pytest.mark.timeout(20)
def test_imap_timeout_raises_from_the_iterator(gate: threading.Event) -> None:
    def held(x: int) -> int:
        if x >= 2:
            assert gate.wait(10)
        return x

    iterator = mp.imap(held, range(10), chunksize=1, timeout=0.2, backend="thread")
    with pytest.raises(mp.TaskTimeoutError):
        list(iterator)
    gate.set()


def test_map_with_a_timeout_that_is_not_reached(backend: str) -> None:
    assert mp.parallel_map(triple_plus_one, range(100), timeout=30, backend=backend) == [
        triple_plus_one(x) for x in range(100)
    ]


@pytest.mark.timeout(20)
def test_closing_imap_early_cancels_chunks_in_flight(gate: threading.Event) -> None:
    lock = threading.Lock()
    started: list[int] = []

    def held(x: int) -> int:
        with lock:
            started.append(x)
        if x > 0:
            assert gate.wait(10)
        return x

    iterator = mp.imap(held, range(1000), chunksize=1, max_in_flight=8, backend="thread")
    assert next(iterator) == 0
    assert mp.get_active_task_count() > 0
    iterator.close()
    assert mp.get_active_task_count() == 0  # every chunk in flight was cancelled
    gate.set()
    assert wait_until_idle(5)
    assert mp.get_active_task_count() == 0
    with lock:
        assert max(started) <= 8  # nothing past the in-flight window was ever started


@pytest.mark.timeout(20)
def test_a_cancelled_chunk_stops_before_its_next_item(gate: threading.Event) -> None:
    mp.configure_thread_pool(2)
    lock = threading.Lock()
    ran: list[int] = []
    first_running = threading.Event()

    def held(x: int) -> int:
        with lock:
            ran.append(x)
        if x == 0:
            first_running.set()
            assert gate.wait(10)
        return x

    # One chunk of ten items; the consumer waits on it with a timeout (so it never
    # runs it inline), times out, and cancels it while item 0 is held. (A second
    # is ample for a worker to start the chunk; the check below says if it did not.)
    with pytest.raises(mp.TaskTimeoutError):
        mp.parallel_map(held, range(10), chunksize=10, timeout=1.0, backend="thread")
    assert first_running.is_set()
    gate.set()
    assert wait_until_idle(5)
    # the worker's chunk may take a moment to notice; a task finished on the pool
    # after it proves it moved on
    probe = mp.parallel(backend="thread")(lambda: None)
    for handle in [probe() for _ in range(4)]:
        assert handle.wait(5)
    with lock:
        assert ran == [0]


def test_an_error_cancels_the_rest(gate: threading.Event) -> None:
    lock = threading.Lock()
    started: list[int] = []

    def fail_first(x: int) -> int:
        with lock:
            started.append(x)
        if x == 0:
            raise Boom(0, "first")
        assert gate.wait(10)
        return x

    with pytest.raises(Boom):
        mp.parallel_map(fail_first, range(1000), chunksize=1, max_in_flight=4, backend="thread")
    assert mp.get_active_task_count() == 0
    gate.set()
    assert wait_until_idle(5)
    with lock:
        assert max(started) < 4 + 4  # the input was not read on after the failure


# -- a map of one item (one task, without the machinery of many chunks) ----------------------------


@pytest.mark.parametrize(
    ("item", "on_error", "expected"),
    [
        (2, "raise", [2]),
        (2, "skip", [2]),
        (2, "none", [2]),
        (5, "skip", []),
        (5, "none", [None]),
    ],
)
def test_a_map_of_one_item(backend: str, item: int, on_error: str, expected: list[Any]) -> None:
    got = mp.parallel_map(fail_on_multiples_of_five, [item], on_error=on_error, backend=backend)  # type: ignore[call-overload]
    assert got == expected


def test_a_map_of_one_failing_item_raises_it_with_its_index(backend: str) -> None:
    with pytest.raises(Boom) as caught:
        mp.parallel_map(fail_on_multiples_of_five, (5,), backend=backend)
    assert caught.value.code == 5
    assert any("item 0 (5)" in note for note in caught.value.__notes__)


class Lying:
    """A sized iterable whose length is wrong: ``__len__`` says 1."""

    def __init__(self, items: list[int]) -> None:
        self.items = items

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[int]:
        return iter(self.items)


@pytest.mark.parametrize("items", [[], [1], [1, 2, 3]])
def test_a_length_of_one_is_not_trusted(backend: str, items: list[int]) -> None:
    assert mp.parallel_map(triple_plus_one, Lying(items), backend=backend) == [3 * x + 1 for x in items]


def test_a_map_of_one_item_with_progress_or_timeout(backend: str) -> None:
    seen: list[tuple[int, int | None]] = []
    assert mp.parallel_map(triple_plus_one, [2], progress=lambda done, total: seen.append((done, total)), backend=backend) == [7]
    assert seen == [(1, 1)]
    assert mp.parallel_map(triple_plus_one, [2], timeout=30, backend=backend) == [7]


def test_an_interrupted_map_of_one_item_cancels_its_task(gate: threading.Event, monkeypatch: pytest.MonkeyPatch) -> None:
    started = threading.Event()
    handles: list[mp.AsyncHandle[Any]] = []

    def interrupted_get(self: mp.AsyncHandle[Any], timeout: float | None = None) -> Any:
        handles.append(self)
        assert started.wait(10)
        raise KeyboardInterrupt  # as Ctrl-C lands in the wait

    def wait_for_the_gate(x: int) -> int:
        started.set()
        gate.wait(10)
        mp.check_cancelled()
        return x

    monkeypatch.setattr(mp.AsyncHandle, "get", interrupted_get)
    with pytest.raises(KeyboardInterrupt):
        mp.parallel_map(wait_for_the_gate, [1], backend="thread")
    monkeypatch.undo()
    (handle,) = handles
    assert handle.cancelled()
    gate.set()
    wait_until_idle(10)


# -- bad options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"chunksize": 0}, ValueError, "chunksize"),
        ({"chunksize": -3}, ValueError, "chunksize"),
        ({"chunksize": 2.5}, TypeError, "chunksize"),
        ({"chunksize": True}, TypeError, "chunksize"),
        ({"max_in_flight": 0}, ValueError, "max_in_flight"),
        ({"max_in_flight": "8"}, TypeError, "max_in_flight"),
        ({"ordered": "yes"}, TypeError, "ordered"),
        ({"ordered": 1}, TypeError, "ordered"),
        ({"on_error": "x"}, ValueError, "on_error"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": "soon"}, TypeError, "timeout"),
        ({"progress": "yes"}, TypeError, "progress"),
        ({"backend": "gpu"}, ValueError, "backend"),
    ],
)
@pytest.mark.parametrize("items", [[1, 2], [1]], ids=["two items", "one item"])
def test_bad_options_are_rejected_at_the_call(
    kwargs: dict[str, Any], error: type[Exception], pattern: str, items: list[int]
) -> None:
    with pytest.raises(error, match=pattern):
        mp.parallel_map(triple_plus_one, items, **kwargs)
    with pytest.raises(error, match=pattern):
        mp.imap(triple_plus_one, items, **kwargs)  # at the call, not at the first next()


@pytest.mark.parametrize("fn", [None, 3, "triple_plus_one"])
def test_a_non_callable_fn_is_rejected(fn: Any) -> None:
    with pytest.raises(TypeError, match="fn must be callable"):
        mp.parallel_map(fn, [1, 2])
    with pytest.raises(TypeError, match="fn must be callable"):
        mp.imap(fn, [1, 2])


@pytest.mark.timeout(10)
@pytest.mark.parametrize("iterable", [3, None, object()])
def test_a_non_iterable_is_rejected_naming_the_argument_and_the_value(iterable: Any) -> None:
    pattern = rf"^iterable must be .*, got {re.escape(repr(iterable))} \({type(iterable).__name__}\)"
    with pytest.raises(TypeError, match=pattern):
        mp.parallel_map(triple_plus_one, iterable)
    with pytest.raises(TypeError, match=pattern.replace("iterable", "items", 1)):  # the 0.2 name, as given
        mp.parallel_map(func=triple_plus_one, items=iterable)
    with pytest.raises(TypeError, match=pattern):
        mp.imap(triple_plus_one, iterable)


class _BrokenIterable:
    def __iter__(self) -> Iterator[int]:
        raise TypeError("broken on purpose")


@pytest.mark.timeout(10)
def test_an_iterables_own_type_error_comes_back_as_itself() -> None:
    with pytest.raises(TypeError, match="^broken on purpose$"):
        mp.parallel_map(triple_plus_one, _BrokenIterable())


def _rows(n: int) -> Iterator[int]:
    yield from range(n)


async def _async_rows(n: int) -> Any:
    yield n


def _passing_through(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        return fn(*args)

    return wrapper


@pytest.mark.parametrize("call", ["parallel_map", "imap"])
@pytest.mark.parametrize(
    ("fn", "kind"),
    [
        pytest.param(_rows, "a generator", id="generator function"),
        pytest.param(_async_rows, "an async generator", id="async generator function"),
        pytest.param(functools.partial(_rows), "a generator", id="partial"),
        pytest.param(_passing_through(_rows), "a generator", id="functools.wraps decorator"),
    ],
)
def test_a_map_refuses_a_generator_function(call: str, fn: Any, kind: str) -> None:
    # Each item would give back a generator whose body never ran in parallel.
    with pytest.raises(TypeError, match=f"cannot map .*it is {kind} function.*returns the item's value"):
        getattr(mp, call)(fn, range(3))


async def _async_double(x: int) -> int:
    return 2 * x


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
@pytest.mark.parametrize("call", ["parallel_map", "imap"])
@pytest.mark.parametrize("items", [[3], [3, 4]], ids=["one item", "two items"])
@pytest.mark.parametrize(
    "fn", [_async_double, mp.parallel(_async_double)], ids=["async def function", "parallel async def function"]
)
def test_a_map_of_an_async_function_runs_its_body(call: str, items: list[int], fn: Any, backend: str) -> None:
    """A map of an ``async def`` function gives each item's value, as a ``@parallel`` call of it does.

    ``mp.parallel(_async_double)(3).get()`` is 6, but a map of the same function gives
    back coroutine objects whose body never ran (and Python warns that they were
    never awaited): the user's work silently never happens.
    """
    assert mp.parallel(_async_double)(3).get(timeout=10) == 6
    results = list(getattr(mp, call)(fn, items, backend=backend))
    assert results == [2 * x for x in items], f"{call} gave {results!r}: the coroutines never ran"



def test_the_coroutines_of_an_async_map_chunk_on_threads_are_freed_as_they_end() -> None:
    # Each item's coroutine left its cancel on the chunk's handle until the chunk ended,
    # holding its asyncio task: every later item walked them all, and a chunk of 10,000
    # items took 26 s. (The same on a worker process: test_process_backend.)
    assert mp.parallel_map(earlier_items_alive, range(20), chunksize=20, backend="thread") == [0] * 20


def _logged(fn: Any) -> Any:
    """A plain decorator over an ``async def`` function, as logging or retry decorators are written."""

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        return fn(*args)

    return wrapper


_logged_async_double = _logged(_async_double)


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
@pytest.mark.parametrize("call", ["parallel_map", "imap"])
def test_a_map_of_a_decorated_async_function_runs_its_body(call: str, backend: str) -> None:
    """A map of an ``async def`` function under a plain decorator gives each item's value.

    ``@parallel`` runs the coroutine such a function returns (``mp.parallel(f)(3).get()``
    is 6), but the map judges the function by its own code only: the user gets back
    coroutine objects whose body never ran, and a 'never awaited' warning.
    """
    assert mp.parallel(_logged_async_double)(3).get(timeout=10) == 6
    results = list(getattr(mp, call)(_logged_async_double, [3, 4], backend=backend))
    unrun = [value for value in results if asyncio.iscoroutine(value)]
    for coroutine in unrun:
        coroutine.close()  # no 'never awaited' warning to fall on a later test
    assert not unrun, f"{call} gave {len(unrun)} coroutine objects whose body never ran"
    assert results == [6, 8]


def test_a_chunk_past_its_budget_finishes_what_would_take_under_a_later_chunks_work() -> None:
    # Stopped a third of the way, a first chunk of a million cheap items over a
    # list sent the rest again as chunks of their own: a round trip each, and
    # every item of it pickled twice.
    from makeparallel._process_chunks import past_budget

    budget = _FIRST_WAVE_SECONDS
    assert not past_budget(budget / 2, budget, done=1000, left=10**6)  # within its budget: it goes on
    assert not past_budget(budget, budget, done=1000, left=2000)  # the rest: 2x the budget
    assert past_budget(budget, budget, done=1000, left=3000)  # 3x: stopped, to be spread
    assert past_budget(budget, budget, done=1, left=100)  # slow items stop


@pytest.mark.timeout(60)
def test_the_map_thread_never_runs_the_slow_rest_of_a_stopped_chunk_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    # The rest of a chunk that stopped at its budget ends in a piece under a
    # budget again, of slow items. The map's thread ran it itself when it was
    # still queued, as it always was on threads (the workers' wake-up came
    # later): each slow item after the first wave then ran there while the
    # workers idled and no other stopped chunk went on, and 1,000 items of
    # which ten slept 0.5 s took 4.5 s on two threads, 2.5 s on two processes.
    # Here every chunk under a budget stops after its first item and the
    # measured size is one item, so that the rests come in slow pieces without
    # slow items; the map's thread must claim none of them, as the workers
    # start each in its grace (long here: a loaded machine is not slow workers).
    mp.configure_thread_pool(2)
    monkeypatch.setattr(_map, "_SLOW_REST_GRACE_SECONDS", 60.0)
    monkeypatch.setattr(_map, "_FIRST_WAVE_SECONDS", 0.0)
    monkeypatch.setattr(_map, "_WHOLE_MAP_CHUNK_SECONDS", 1e-12)
    budgeted: list[Any] = []  # the chunks started under a budget, first wave first (kept: ids stay theirs)
    start_chunk = _map._Mapper._submit_chunk  # every chunk a map submits

    def recorded(self: Any, items: Any, start: int, budget: float | None, *args: Any, **options: Any) -> Any:
        entry = start_chunk(self, items, start, budget, *args, **options)
        if budget is not None and entry is not None:
            budgeted.append(entry[0])
        return entry

    claimed: list[Any] = []  # the queued chunks the map's thread ran itself
    run_here = mp.AsyncHandle._run_here_if_queued
    map_thread = threading.get_ident()

    def spied(handle: Any) -> bool:
        ran = run_here(handle)  # (it asks after its grace, once a worker started the piece: not run here)
        if ran and threading.get_ident() == map_thread:
            claimed.append(handle)
        return ran

    monkeypatch.setattr(_map._Mapper, "_submit_chunk", recorded)
    monkeypatch.setattr(mp.AsyncHandle, "_run_here_if_queued", spied)
    assert mp.parallel_map(triple_plus_one, list(range(40)), backend="thread") == [3 * x + 1 for x in range(40)]
    slow_rests = budgeted[2:]  # after the first wave's two chunks
    assert slow_rests, "no chunk stopped at its budget: the test no longer sets up what it checks"
    assert not [rest for rest in slow_rests if any(rest is handle for handle in claimed)], (
        "the map's thread claimed the slow rest of a stopped chunk"
    )


@pytest.mark.timeout(60)
def test_the_slow_rest_of_a_stopped_chunk_runs_in_the_map_thread_when_no_worker_takes_it(
    monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    # The map's thread left such a piece to the workers whatever they did: with
    # the pool's one worker busy until the map had returned (a task waiting on
    # it), the map waited for good, where it had run every chunk itself.
    monkeypatch.setattr(_map, "_FIRST_WAVE_SECONDS", 0.0)  # every chunk under a budget stops after its first item
    monkeypatch.setattr(_map, "_WHOLE_MAP_CHUNK_SECONDS", 1e-12)  # and the measured size is one item
    slow_rests: list[int] = []
    go_on = _map._Mapper._continue

    def recorded(self: Any, place: int, items: Any, start: int) -> None:
        go_on(self, place, items, start)
        slow_rests.extend(self._slow_rests)

    monkeypatch.setattr(_map._Mapper, "_continue", recorded)
    held = hold_one_worker(gate)
    results: list[list[int]] = []
    mapping = threading.Thread(
        target=lambda: results.append(mp.parallel_map(triple_plus_one, list(range(40)), backend="thread"))
    )
    mapping.start()
    try:
        mapping.join(20)  # it takes well under a second; without the fix, until the gate opens
        assert not mapping.is_alive(), "the map waited for the worker busy until it returned"
    finally:
        gate.set()
        mapping.join()
        held.wait(10)
    assert slow_rests, "no chunk stopped at its budget: the test no longer sets up what it checks"
    assert results == [[3 * x + 1 for x in range(40)]]


ran_once: list[int] = []


async def _double_noted(x: int) -> int:
    ran_once.append(x)
    if x == 13:
        raise Boom(13, "unlucky")
    return 2 * x


def _returns_a_coroutine(x: int) -> Any:
    """A plain function, no wrapper: only what it returns tells that it is async (a lambda around one, say)."""
    return _double_noted(x)


@pytest.mark.parametrize("backend", [*BACKENDS, "process"])
@pytest.mark.parametrize("call", ["parallel_map", "imap"])
def test_a_map_of_a_plain_function_that_returns_coroutines_runs_them(call: str, backend: str) -> None:
    # The map gave back coroutine objects whose body never ran (on processes, a
    # "cannot pickle 'coroutine' object" error), where a @parallel call runs it.
    ran_once.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a coroutine never awaited
        for items in ([3], list(range(14, 54))):
            assert list(getattr(mp, call)(_returns_a_coroutine, items, backend=backend)) == [2 * x for x in items]
        with pytest.raises(Boom) as caught:
            list(getattr(mp, call)(_returns_a_coroutine, range(20), backend=backend))
        assert "makeparallel: raised by item 13 (13)" in caught.value.__notes__
        kept = list(getattr(mp, call)(_returns_a_coroutine, range(20), backend=backend, on_error="none"))
        assert kept == [None if x == 13 else 2 * x for x in range(20)]
        gc.collect()  # a coroutine dropped unawaited warns as it is collected
    if backend != "process":  # each item's body ran once, though its call ran again
        assert sorted(ran_once[:41]) == [3, *range(14, 54)]


class _ChecksThenReturnsACoroutine:
    """A sync ``__call__`` that checks its item first, then returns a coroutine."""

    def __call__(self, x: int) -> Any:
        if x == 1:
            raise Boom(1, "refused")
        return _double_noted(x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_handed_out_before_an_error_had_their_coroutines_run(backend: str) -> None:
    # An item that raised before the slice's coroutines were looked at had the
    # results before it handed out as coroutine objects whose body never ran.
    ran_once.clear()
    got: list[Any] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a coroutine never awaited
        with pytest.raises(Boom):
            for value in mp.imap(_ChecksThenReturnsACoroutine(), list(range(64)), chunksize=32, backend=backend):
                got.append(value)
        gc.collect()
    assert got == [0]
    assert ran_once.count(0) == 1


@pytest.mark.parametrize("items", [[3], [3, 4, 5]], ids=["one item", "three items"])
def test_a_map_of_an_async_function_called_inside_a_running_event_loop_gives_its_values(
    items: list[int], gate: threading.Event
) -> None:
    """``parallel_map`` of an ``async def`` function on threads works where an event loop runs (a Jupyter cell).

    A map of a plain function works there; one of an ``async def`` function raises
    ``RuntimeError: Cannot run the event loop while another loop is running``, blamed
    on item 0, whenever the pool's workers are busy: the caller then runs a queued
    chunk itself, and starts a second event loop on its thread.
    """
    held = hold_one_worker(gate)  # the pool's one worker is busy: the map's chunks stay queued

    async def cell() -> list[int]:
        return mp.parallel_map(_async_double, items, backend="thread")

    try:
        assert asyncio.run(cell()) == [2 * x for x in items]
    finally:
        gate.set()
        held.wait(10)


def _outlives_its_timeout(x: int) -> int:
    """An item that runs past 0.05 s by its own clock, calling check_cancelled() as it goes.

    0.2 s for items 1 and 2, 20 s from 3 on: a call that must time out runs until it
    does, however late a loaded machine's deadline thread gets to it (in 0.2 s, not always).
    """
    ends = time.monotonic() + (0.2 if x < 3 else 20)
    while time.monotonic() < ends:
        mp.check_cancelled()  # raised here if the function's timeout applied to the item
    return x


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["parallel_map", "imap"])
def test_a_map_runs_each_item_of_a_function_with_a_timeout_to_its_end(backend: str, how: str) -> None:
    # As documented: a @parallel function's own timeout bounds its calls, not the
    # items of its maps, which the map's timeout= bounds as a whole.
    limited = mp.parallel(backend=backend, timeout=0.05)(_outlives_its_timeout)
    run = mp.parallel_map if how == "parallel_map" else (lambda *a, **k: list(mp.imap(*a, **k)))
    assert run(limited, [1, 2], chunksize=1) == [1, 2]
    with pytest.raises(mp.TaskTimeoutError, match="timed out after 0.05 s"):
        limited(3).get(timeout=10)  # a call is bounded
