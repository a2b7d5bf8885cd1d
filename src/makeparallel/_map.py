"""Batch maps: ``parallel_map`` (a list) and ``imap`` (lazy), in chunks.

Data flow::

    iterable --islice (a list or range: a slice)--> chunk --submit--> one task per chunk
                                                                          | results list
    consumer <--yield items in order (or as chunks end)-------------------+

Why chunks: a task costs microseconds of bookkeeping (tens on worker
processes, a round trip), an item of a cheap function tens of nanoseconds.
Chunk sizes come from the measured run time of finished chunks, about 10 ms of
work each (``_ChunkSizer``). ``imap``'s first chunks hold one item, so that a
map of heavy items starts with every worker on one item (good balance, early
results, prompt cancellation). With a known length there is one such chunk per
worker and the rest waits for the first to end: its time sets the size at once,
capped at ``ceil(len / (4 * workers))`` items (``multiprocessing.Pool.map``'s
chunk size) so every worker gets several chunks, and items left that are little
work go in one chunk per worker. Without a length, sizes at most double per
finished chunk: no cap bounds a first measurement that was too optimistic.
``parallel_map``, whose caller waits for the whole list and not for a first
result, does without that wave of probes when the length is known: its first
chunks are the items split evenly between the workers, each stopping after
``_FIRST_WAVE_SECONDS`` of work, and the items a stopped chunk did not reach
run next, in chunks of the size its measure gives. A small map of cheap items
is thus one wave of round trips, and slow items are still spread one chunk of
about 10 ms at a time.

Memory: at most ``max_in_flight`` items are read from the iterable and not yet
handed to the consumer, so ``imap`` over an endless generator is safe. By
default that bound is also kept under about 256 MiB: a chunk is sized by run
time, and tens of thousands of cheap items of 64 KiB each would be gigabytes.
The size of an item is estimated from a few items of each chunk read
(``sys.getsizeof``, one level into tuples, lists and dicts, subclasses too), and the read-ahead
in items is capped at the budget over that estimate, never below one item per
worker plus one, so large items still run in parallel. Data held deeper (in an
object's attributes, a dict of dicts) is not seen, and what items share is
counted once per item: for such items ``max_in_flight`` is the bound
(docs/architecture.md, "The size estimate stays one level deep").

Failures: a failing item stops its chunk (``on_error="raise"``) and its error
names the item's index and a short repr; ``imap`` first hands out the results
of the chunk's items before it (``keep_results_before``); with ``"skip"`` or
``"none"`` the chunk carries on. On worker processes each item's result is
journaled in shared memory as it ends, so a worker that dies loses only the
item it was running, and no item runs twice (``_process_chunks``). An item
that cannot be pickled ends the input there, as an error reading it does: the
items before it run, their results are handed out, then its error is raised
(``_Mapper._send_before_unsendable``). Ctrl-C, an
error, a timeout or closing the ``imap`` iterator early cancels the chunks in
flight; a running chunk stops before its next item.

Limits: the chunks of a ``@parallel`` function's map are admitted through its
own ``max_concurrent`` limiter, the one its direct calls take their slots
from, so at most that many chunks (each running its items one after another)
and calls run at once; the map is sized as for that many workers. The chunks
queue at the function's priority.
"""

from __future__ import annotations

import functools
import itertools
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from typing import Any, Literal, NoReturn, TypeGuard, TypeVar, Union, overload

from ._admission import Limiter, NoSlotInTime, ResultReady, UntilReady
from ._backends._base import Backend
from ._chunk_task import Awaited, run_chunk
from ._collect import Completions, OnError, check_on_error, read_elsewhere, reading_alone
from ._decorators import (
    _CO_ASYNC_GENERATOR,
    _CO_COROUTINE,
    _CO_GENERATOR,
    ParallelFunction,
    _BoundParallelFunction,
    TaskSpec,
    _describe,
    _generator_kind,
    _plain_code,
    _returns_coroutines,
    callable_of,
    wraps_async,
)
from ._gil_watch import MAP_REMEDY
from ._handle import AsyncHandle, cancel_and_stop, stop_if_running, time_out_all
from ._notes import add_note
from ._progress import Progress, ProgressOption, check_progress, open_progress
from ._runtime import BackendOption, check_backend, get_backend, global_limiter
from ._states import PENDING, RUNNING, SUCCEEDED, TIMED_OUT
from ._task_context import current_task
from ._unsendable_chunk import (
    TOO_DEEP,
    caused,
    first_unsendable_together,
    refuse_unsendable_function,
    too_deep,
)
from ._validation import check_count, check_wait_timeout
from ._process_chunks import Failure as _Failure
from ._process_chunks import (
    CallUnpickled,
    TimedResults,
    after_crash,
    after_unpickled,
    after_unreadable,
    chunk_results,
    describe_item,
    keep_results_before,
    take_results_before,
)
from .errors import TaskSerializationError, TaskTimeoutError, WorkerCrashedError

__all__ = ["imap", "parallel_map"]

T = TypeVar("T")
R = TypeVar("R")

_TARGET_CHUNK_SECONDS = 0.01
# A parallel_map's caller waits for the whole list, so its chunks aim at more work:
# each chunk is a round trip in which its worker idles (window of one for long tasks).
_WHOLE_MAP_CHUNK_SECONDS = 0.05
# A chunk of one item measures mostly a task's fixed cost when items are cheap
# (tens of microseconds on a worker process, a hundred times a no-op's own), so
# chunks sized from it aim at this many times the target, until a larger chunk
# is measured. Only with a known length, where chunks stay under Pool.map's
# size: the worst case is Pool.map's chunks for one wave. An unknown length has
# no such cap, and its probes in flight, each doubling the size as it ends,
# would reach that many times the target before any real measurement.
_ONE_ITEM_SLACK = 25
# A parallel_map's first chunks, one per worker, of unmeasured items, stop after
# this many seconds, and the items they did not reach are chunked from their measure.
_FIRST_WAVE_SECONDS = 0.02
# The slow rest of a chunk that stopped (_Mapper._slow_rests), the oldest chunk, where none of the
# map's chunks runs, is left to a worker that starts it within this many seconds, looked at every
# _SLOW_REST_LOOK_SECONDS; past that, the map's thread runs it, as any queued oldest chunk: every
# worker is busy with other tasks, maybe until the map returns (_Mapper._no_worker_takes).
_SLOW_REST_GRACE_SECONDS = 0.02
_SLOW_REST_LOOK_SECONDS = 0.001
_MAX_CHUNK = 1 << 17
#: A map's items: an iterator, or a sequence it slices.
_Items = Union[Iterator[Any], list[Any], range]
#: What a map gives the results of, not what a call returns: a ``@parallel`` function or
#: method (its handles) or an async function (its coroutines, run to their end in the workers).
_RunToResults = Union[
    ParallelFunction[[T], R], _BoundParallelFunction[[T], R], Callable[[T], Coroutine[Any, Any, R]]
]
_MISSING: Any = object()  # an argument not given (None is a value to reject)
#: Bytes read ahead of the consumer, at most, when ``max_in_flight`` is not given.
DEFAULT_MAX_BYTES_IN_FLIGHT = 256 * 1024 * 1024
_GENERATOR_FLAGS = _CO_GENERATOR | _CO_ASYNC_GENERATOR
_SIZE_SAMPLES = 3  # items sized per chunk read (first, middle, last)
_ELEMENT_SAMPLES = 4  # elements sized per container item
_SIZED_INTO = (dict, tuple, list)  # the items whose elements are sized too, subclasses included
# Items an iterator's chunk reads between two sizings, at most (_Mapper._read_within_bytes): what it may
# read past its share where its items grow. Runs that doubled up to half a chunk of cheap items read
# 32,768 of the 1 MiB items that followed 100,000 short lines before sizing one: 3 GiB, not 256 MiB.
# Not fewer: a run costs about 0.6 us, some 10 ns an item of a cheap map at 64 (docs/architecture.md).
_SIZED_RUN = 64


def _is_sliced(items: object) -> TypeGuard[list[Any] | range]:
    """Whether a map slices ``items`` rather than iterating them: an exact ``list`` or ``range``."""
    return type(items) is list or type(items) is range


def _estimated_size(item: Any) -> float:
    """Bytes ``item`` holds, estimated: ``sys.getsizeof``, plus a few elements of a container.

    ``getsizeof`` counts a tuple, list or dict without what it refers to, and an
    item is often a tuple of arguments; a few elements are sized and scaled to
    the container's length. Deeper structures are underestimated. A subclass
    (a namedtuple, an ``OrderedDict``) is one too, read through the built-in
    type's own methods, so that no code of the item's runs here but its
    ``__sizeof__`` (:func:`_size_of`).
    """
    size = float(_size_of(item))
    kind = type(item)
    if kind is dict:
        elements: Iterable[Any] = item.values()
        count = len(item)
    elif kind is tuple or kind is list:
        elements = item
        count = len(item)
    elif issubclass(kind, _SIZED_INTO):  # the item's type, not the __class__ it claims (a mock's spec)
        base = next(each for each in _SIZED_INTO if issubclass(kind, each))
        elements = dict.values(item) if base is dict else base.__iter__(item)
        count = base.__len__(item)
    else:
        return size
    sampled = [_size_of(element) for element in itertools.islice(elements, _ELEMENT_SAMPLES)]
    if sampled:
        size += sum(sampled) * count / len(sampled)
    return size


def _size_of(obj: Any) -> int:
    """``sys.getsizeof(obj)``; where ``obj``'s own ``__sizeof__`` fails, the size of its bare object.

    ``getsizeof`` runs the object's ``__sizeof__``, code the user never asked
    the map to run: one that raised (a proxy whose target is gone, a lazy
    row), returned a negative number (``ValueError``) or no int
    (``TypeError``) failed the whole map, with no note, though the function
    would have mapped the item, and did with ``max_in_flight`` given. Such an
    item counts as one whose data is held where the estimate does not look.
    (``Exception`` only: a Ctrl-C there stops the map, as anywhere.)
    """
    try:
        return sys.getsizeof(obj)
    except Exception:  # noqa: BLE001  # the item's __sizeof__ failed: its header's size, as getsizeof's default
        return object.__sizeof__(obj)


class _ChunkSizer:
    """Chooses the size of the next chunk from the run times of finished ones.

    Before any chunk was measured: chunks of one item, one per worker when the
    length is known (then nothing more until the first one ends), else as many
    as may be in flight. Each finished chunk then sets the size to about
    ``_TARGET_CHUNK_SECONDS`` of work at its measured time per item (with a
    known length, ``_ONE_ITEM_SLACK`` times that while only chunks of one item
    were measured, whose time is mostly the task's fixed cost when items are cheap;
    once a larger chunk was, a chunk of one item is one slow item, taken at its
    time, or sizes would swing between one item and that many times the target):

    * with a known length, at once, capped at ``ceil(len / (4 * workers))``
      items (the chunk size of ``multiprocessing.Pool.map``), so that every
      worker gets several chunks; unless all the items left fit in one such
      chunk per worker, which they then get;
    * without one, growing at most twofold per finished chunk, as no cap
      bounds a first measurement that was too optimistic.

    With ``first_wave`` (``parallel_map``, whose caller waits for the whole
    list, not for a first result), chunks aim at ``_WHOLE_MAP_CHUNK_SECONDS``
    instead: fewer round trips. With a known length too, the first chunks are the
    items split evenly between the workers (up to ``_MAX_CHUNK`` each), run
    under a time budget (:attr:`budget`): a small map of cheap items is one
    wave of round trips, and slow items stop their chunk early, to be chunked
    from their measure (by the map: :meth:`_Mapper._continue`).
    """

    def __init__(
        self, chunksize: int | None, total: int | None, workers: int, limit: int, first_wave: bool = False
    ) -> None:
        self._fixed = chunksize
        self._target = _WHOLE_MAP_CHUNK_SECONDS if first_wave else _TARGET_CHUNK_SECONDS
        self._workers = workers
        self._limit = limit
        self._known_length = total is not None
        cap = _MAX_CHUNK if total is None else max(1, -(-total // (4 * workers)))
        self._cap = min(cap, limit)
        self._size = 1
        # Unmeasured chunks still to hand out; None: no limit (an unknown length).
        self._probes: int | None = workers if total is not None else None
        self._measured = False
        self._only_one_item_measured = True  # the slack's condition: no larger chunk measured yet
        self._last_wave = False  # the items left were split between the workers
        self.budget: float | None = None  # seconds the chunks handed out now may run; None: no limit
        # Items of about the target's work at the last measure, at most Pool.map's
        # chunk: the size of the chunks that take on the items a stopped chunk left.
        self.measured_size = 1
        if first_wave and total is not None and chunksize is None:
            self._size = max(1, min(-(-total // workers), _MAX_CHUNK, limit))
            self._only_one_item_measured = False  # no probes: a chunk of one item is one slow item
            self.budget = _FIRST_WAVE_SECONDS

    def next_size(self) -> int:
        """Items for the next chunk; 0: wait for a chunk to end first."""
        if self._fixed is not None:
            return self._fixed
        if not self._measured and self._probes is not None:
            if self._probes <= 0:
                return 0
            self._probes -= 1
        return self._size

    def observe(self, items: int, seconds: float, remaining: int | None) -> None:
        """Size the next chunks from one that ran ``items`` in ``seconds``; ``remaining``: items not read yet."""
        if self._fixed is not None or items == 0:
            return
        per_item = max(seconds / items, 1e-9)
        if items > 1:  # a chunk of one item is now one slow item, not a task's fixed cost
            self._only_one_item_measured = False
        slack = _ONE_ITEM_SLACK if self._known_length and self._only_one_item_measured else 1
        target = self._target * slack
        wanted = max(1, round(target / per_item))
        self._measured = True
        self.budget = None
        self.measured_size = min(wanted, self._cap)
        if not self._known_length:
            self._size = min(wanted, 2 * max(self._size, items), self._cap)
            return
        if self._last_wave:
            return
        share = max(1, -(-(remaining or 0) // self._workers))
        if share <= wanted:  # the rest is little work: one chunk per worker, and no more resizing
            self._size = min(share, self._limit)
            self._last_wave = True
        else:
            self._size = min(wanted, self._cap)


def _plain_function(fn: Any, given_as: str = "fn") -> tuple[Callable[[Any], Any], str, TaskSpec | None]:
    """The callable to apply per item, the name to report, and the options of ``fn`` if it is ``@parallel`` (its backend, its limit).

    ``given_as`` names the argument in the error for one that is not callable.
    """
    code = _plain_code(fn)
    if code is not None:  # a plain function, the usual case: its code's flags tell all (no __wrapped__)
        if code.co_flags & _GENERATOR_FLAGS:
            _refuse_generator_function(fn)
        return (Awaited(fn) if code.co_flags & _CO_COROUTINE else fn), fn.__qualname__, None
    runs = callable_of(fn)
    if runs is not fn:  # a staticmethod object's function, a @parallel class method's bound function
        return _plain_function(runs, given_as)
    if type(fn) is functools.partial:  # partial(work, scale=2) of a @parallel function: its plain function's
        inner: Any = fn.func
        args, keywords = fn.args, fn.keywords
        while True:
            inner = callable_of(inner)
            if type(inner) is not functools.partial:
                break
            # A partial with attributes of its own (functools.update_wrapper's) is not merged into
            # one made over it: its arguments come first, the outer one's keywords win, as called.
            inner, args, keywords = inner.func, (*inner.args, *args), {**inner.keywords, **keywords}
        if isinstance(inner, _BoundParallelFunction):
            inner, args = inner._function, (inner._instance, *args)
        if isinstance(inner, ParallelFunction):  # called, it started a task per item, and gave its handle
            bound = functools.partial(inner._fn, *args, **keywords)
            awaited = _returns_coroutines(inner._fn) or wraps_async(inner._fn)
            return (Awaited(bound) if awaited else bound), inner._spec.name, inner._spec
    if isinstance(fn, _BoundParallelFunction):
        plain, name, spec = _plain_function(fn._function)
        return functools.partial(plain, fn._instance), name, spec
    if isinstance(fn, ParallelFunction):  # a generator function was refused at decoration already
        plain = fn._fn
        awaited = _returns_coroutines(plain) or wraps_async(plain)
        return (Awaited(plain) if awaited else plain), fn._spec.name, fn._spec
    if not callable(fn):
        raise TypeError(f"{given_as} must be callable, got {fn!r}")
    _refuse_generator_function(fn)
    return (Awaited(fn) if _returns_coroutines(fn) or wraps_async(fn) else fn), _describe(fn), None


def _refuse_generator_function(fn: Any) -> None:
    """Raise ``TypeError`` for a function whose call only creates a generator.

    Each item would give a generator whose body never ran in the map: the work
    would happen later, on the thread that iterates it, not in parallel.
    """
    kind = _generator_kind(fn)
    if kind is not None:
        article = "an" if kind.startswith("a") else "a"
        raise TypeError(
            f"cannot map {_describe(fn)}: it is {article} {kind} function (or wraps one), "
            f"so each item would only create {article} {kind} and none of its body "
            "would run in parallel. Map a function that returns the item's value (a list, "
            "for several values), or pass the generator's items themselves to the map"
        )


# A @parallel function maps as its plain function, and an async function's coroutines run to
# their end: their results, not handles or coroutines (each first).
@overload
def imap(
    fn: _RunToResults[T, R],
    iterable: Iterable[T],
    *,
    chunksize: int | None = None,
    ordered: bool = True,
    progress: ProgressOption = False,
    max_in_flight: int | None = None,
    timeout: float | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    backend: BackendOption | None = None,
) -> MapIterator[R]: ...
@overload
def imap(
    fn: Callable[[T], R],
    iterable: Iterable[T],
    *,
    chunksize: int | None = None,
    ordered: bool = True,
    progress: ProgressOption = False,
    max_in_flight: int | None = None,
    timeout: float | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    backend: BackendOption | None = None,
) -> MapIterator[R]: ...
@overload
def imap(
    fn: _RunToResults[T, R],
    iterable: Iterable[T],
    *,
    chunksize: int | None = None,
    ordered: bool = True,
    progress: ProgressOption = False,
    max_in_flight: int | None = None,
    timeout: float | None = None,
    on_error: Literal["none"],
    backend: BackendOption | None = None,
) -> MapIterator[R | None]: ...
@overload
def imap(
    fn: Callable[[T], R],
    iterable: Iterable[T],
    *,
    chunksize: int | None = None,
    ordered: bool = True,
    progress: ProgressOption = False,
    max_in_flight: int | None = None,
    timeout: float | None = None,
    on_error: Literal["none"],
    backend: BackendOption | None = None,
) -> MapIterator[R | None]: ...
@overload
def imap(
    fn: _RunToResults[T, R],
    iterable: Iterable[T],
    *,
    chunksize: int | None = None,
    ordered: bool = True,
    progress: ProgressOption = False,
    max_in_flight: int | None = None,
    timeout: float | None = None,
    on_error: OnError,
    backend: BackendOption | None = None,
) -> MapIterator[R | None]: ...
@overload
def imap(
    fn: Callable[[T], R],
    iterable: Iterable[T],
    *,
    chunksize: int | None = None,
    ordered: bool = True,
    progress: ProgressOption = False,
    max_in_flight: int | None = None,
    timeout: float | None = None,
    on_error: OnError,
    backend: BackendOption | None = None,
) -> MapIterator[R | None]: ...
def imap(
    fn: Callable[[T], R],
    iterable: Iterable[T],
    *,
    chunksize: int | None = None,
    ordered: bool = True,
    progress: ProgressOption = False,
    max_in_flight: int | None = None,
    timeout: float | None = None,
    on_error: OnError = "raise",
    backend: BackendOption | None = None,
) -> MapIterator[Any]:
    """Apply ``fn`` to every item in parallel and yield the results lazily.

    Iterate with ``for``, or in asyncio code with ``async for`` (the loop is
    never blocked while chunks run). Leaving the loop early, an error, or the
    cancellation of the consuming coroutine cancels the chunks in flight.

    Args:
        fn: a plain function of one argument, or a ``@parallel`` one (its
            backend, name, ``priority`` and ``max_concurrent`` are used; the
            tasks it would make are not, nor its ``timeout``, retry policy
            and circuit breaker: an item runs as long as it takes, within
            the map's ``timeout`` for the whole map. For a timeout per item,
            submit calls: ``mp.gather([fn(x) for x in items])``). Under ``max_concurrent=n`` at most
            ``n`` chunks, so ``n`` items, run at once, its direct calls in
            flight counted: they share its slots. An ``async def`` function's
            coroutine runs to its end for each item, on the worker's own event
            loop, as a ``@parallel`` call's does.
        iterable: the items; read lazily, never more than ``max_in_flight`` ahead.
        chunksize: items per task; by default it adapts to the measured run time.
        ordered: yield in input order (``True``) or as chunks finish (``False``).
        progress: ``True`` for a progress bar (``tqdm.auto``), a dict of tqdm
            options for one (``{"desc": "resize", "unit": "image"}``, and
            ``"redirect_logging": True`` to print log lines above the bar), or a
            callable ``(done, total)`` called after each chunk. The bar's total
            is the input's length; give one of yours (``{"total": n}``) where
            the input has none (a generator): it is the bar's only.
        max_in_flight: the most items read and not yet yielded (default: enough
            to keep every worker busy, at most 131,072 per chunk, and about
            256 MiB of items by their estimated size, but never fewer than one
            item per worker plus one; see "Memory" below).
        timeout: seconds for the whole map; then the rest is cancelled and
            ``TaskTimeoutError`` raised. On the ``"sync"`` backend, whose
            chunks run inline to their end, it is checked as each chunk
            ends: one that ends past it times the map out, the last one too. It
            bounds each chunk's wait for a slot under
            ``mp.set_max_concurrent_tasks`` and the function's
            ``max_concurrent`` too: a chunk with no slot by then is never
            submitted, and the map times out. (A chunk's wait for a slot
            ends as the next result is ready: that result is handed out
            first, and the chunk submitted after it.)
        on_error: ``"raise"`` (the first failure, as itself, with the item's index
            in a note), ``"skip"`` (leave failed items out) or ``"none"`` (``None``
            in their place).
        backend: where the chunks run (a backend name or any
            ``concurrent.futures.Executor``); default: the function's, else the
            default.

    Returns:
        The results, to iterate with ``for`` or ``async for``: a
        ``MapIterator[R]``, or ``MapIterator[R | None]`` with ``on_error="none"``
        (type checkers see which, from the literal).

    Raises:
        TypeError: ``fn`` is not callable, ``iterable`` is not iterable, or an
            option has the wrong type (raised at the call, not when iterating).
        ValueError: an option is out of range, ``backend`` names no backend,
            or the input has a length and a ``total`` in ``progress`` is another.
        ImportError: a progress bar is asked for and tqdm is not installed.
        TaskSerializationError: (while iterating) on worker processes, the
            function or an item cannot be pickled, whatever ``on_error``
            says; the error names which (an item by its index and repr). An
            item's ends the input there: it is raised once the items before
            it ran and their results were handed out, and no item after it runs.
        TaskTimeoutError: ``timeout`` passed (while iterating), or passed as a
            chunk waited for a slot under ``mp.set_max_concurrent_tasks`` or
            the function's ``max_concurrent``.
        Exception: with ``on_error="raise"``, the first item error, as itself,
            once the results of the items before it in its chunk were handed
            out (those of the chunks before it too, in order), except on
            another executor's processes, where they stay. What reading
            ``iterable`` raises, likewise once the results of the items read
            before it were handed out, as ``map()`` gives them.

    Memory:
        Without ``max_in_flight``, the items read ahead of you are kept under
        about 256 MiB (``DEFAULT_MAX_BYTES_IN_FLIGHT``): the size of an item is
        estimated with ``sys.getsizeof`` on a few items of each chunk read (one
        level into tuples, lists and dicts; an iterator's every 64 items as it
        is read, so items that grow are seen), and the number of items read ahead
        is capped at the budget over that estimate. That holds for items that
        hold their data themselves (``bytes``, ``str``, NumPy arrays that own
        it) or one level into a tuple, list or dict (subclasses too: a
        namedtuple, an ``OrderedDict``). Data held deeper, in an
        object's attributes or a dict of dicts, is not seen, nor that of an
        item whose ``__sizeof__`` fails (sized as its bare object): such items are
        bounded in number only, up to ``131,072 * (2 * workers + 2)``. What
        items share (``(row, table)`` with one table for all) is counted once
        per item, which shrinks the read-ahead and the chunks to one item per
        worker plus one. For such items pass ``max_in_flight``: an explicit
        one is a bound in items only, and no size is estimated. The results
        of the chunks in flight are not counted.

    Example:
        >>> import makeparallel as mp
        >>> rows = (bytes(65_536) for _ in range(1_000))  # 64 MiB in all, read lazily
        >>> sum(mp.imap(len, rows)) == 65_536_000
        True
    """
    mapper = _start(fn, iterable, chunksize, ordered, progress, max_in_flight, timeout, on_error, backend)
    return MapIterator(mapper)


class MapIterator(Iterator[R], AsyncIterator[R]):
    """What :func:`imap` returns: an iterator and an async iterator, read one way only.

    Read it with ``for`` or ``next()``, or in asyncio code with ``async for``
    or ``await anext()``, not both. ``async for`` and ``anext()`` read one
    iteration: ``anext()`` then ``async for`` reads on from there.
    ``aiter()`` of it is the async generator both read (not the object
    itself: ``async for`` then reads that generator with no call of ours per
    result).

    One thread reads it at a time (it may be handed from one to another): a
    ``next()`` while another runs, on another thread or from a ``progress``
    callback, raises ``RuntimeError`` and takes nothing from that one.
    :meth:`close` is safe from any thread.
    """

    def __init__(self, mapper: _Mapper) -> None:
        self._mapper = mapper
        self._results: Iterator[R] | None = None
        # What `async for` and anext() read, made at the first of them (their own, as aiter()
        # gave it, had no __anext__ on this object: `await anext(mp.imap(...))` was a TypeError).
        self._async_results: AsyncIterator[R] | None = None
        self._closed = False  # close() came: every next() from now on, on any thread, ends
        self._closed_unstarted = False  # close() came before the first result was asked for
        # Held by the next() that makes the generator: two threads' first next() at once each
        # found none and made one, and the map ran twice (an item came twice, to both readers).
        self._starting = threading.Lock()

    def __next__(self) -> R:
        results = self._results
        if results is None:
            results = self._start()
        try:
            return next(results)
        except ValueError:  # "generator already executing": close() on another thread closes it
            if self._closed:
                raise StopIteration from None
            if results.gi_running:  # type: ignore[attr-defined]  # another next() runs it
                raise read_elsewhere("imap()") from None
            raise

    def _start(self) -> Iterator[R]:
        """The generator ``next()`` reads, made at the first ``next()``.

        Raises:
            RuntimeError: it is iterated with ``async for`` already, or another
                thread's first ``next()`` makes it at this moment.
        """
        with reading_alone(self._starting, "imap()"):
            if self._results is None:
                if self._async_results is not None:
                    raise RuntimeError("this imap is iterated with `async for` already")
                self._results = _each(self._mapper.chunks())
                if self._closed:  # close() on another thread may have found none yet: see _closed_as_started
                    self._closed_as_started()
            return self._results

    def _closed_as_started(self) -> None:
        """A first read made its generator as ``close()`` came on another thread: no map starts.

        ``close()`` marks the imap closed, then looks for a generator; the first
        read makes one, then looks at the mark. That ``close()`` found none
        yet and marked the imap closed unstarted, and the generator made then
        replaced its empty one: the map ran to its end after ``close()``, which
        said it would never start. Made and never run, the generator started
        nothing: dropped, it leaves nothing to stop.
        """
        self._results = _no_results()
        self._closed_unstarted = True
        if self._async_results is not None:
            self._async_results = _nothing()

    def close(self) -> None:
        """Stop: cancel the chunks in flight and read no more input.

        Closed before its first result, the map never starts: iterating it
        then gives nothing, as a generator closed before its first ``next()``.
        After ``close()``, from any thread, every ``next()`` on any thread
        raises ``StopIteration``. Closed as a thread waits in ``next()`` or
        hands out a result (from a ``progress`` callback, say), or read with
        ``async for`` (from any thread), the chunks in flight are cancelled at
        once, and the loop reading it ends as it asks for its next result (on
        the ``"sync"`` backend, whose items run in that thread, once the item
        running returns).

        Thread-safety:
            Safe from any thread, as any ``next()`` runs: the map's generator is
            closed where no thread runs it, else its map is stopped from here
            (:meth:`_Mapper.close_elsewhere`).
        """
        self._closed = True
        if self._results is None and self._async_results is None:
            self._results = _no_results()  # a generator: closing it again is harmless
            self._closed_unstarted = True
        elif self._results is not None:
            # Any next() from now on gets nothing: not the rest of the chunk the generator holds.
            results, self._results = self._results, _no_results()
            try:
                if not results.gi_running:  # type: ignore[attr-defined]
                    results.close()  # type: ignore[attr-defined]  # (a generator is no thread's own)
                    return
            except ValueError:  # a next() began to run it meanwhile: "generator already executing"
                pass
            # The generator runs: closing it raised "generator already executing", and the map went
            # on (a progress callback's close, or a thread's as another waits in next()).
            self._mapper.close_elsewhere()
        else:  # read with `async for`: its generator is not ours to close, and close() did nothing
            self._mapper.close_elsewhere()

    def __aiter__(self) -> AsyncIterator[R]:  # noqa: PYI034  # (not self: a call per result, below)
        """The async generator ``async for`` reads, which ``anext()`` on this object reads too; one per imap.

        Not ``self``: ``async for`` over ``self`` would pay a call of
        :meth:`__anext__` per result (192 ns a result where the generator
        takes 120, on no-op items).

        Raises:
            RuntimeError: it is iterated with ``for`` or ``next()`` already, or
                another thread's first ``next()`` starts it at this moment.
        """
        return self._async_started()

    def __anext__(self) -> Awaitable[R]:
        """The next result, awaited (``await anext(it)``); ``StopAsyncIteration`` at the end.

        Raises:
            RuntimeError: it is iterated with ``for`` or ``next()`` already, or
                another thread's first ``next()`` starts it at this moment.
            Exception: what ``async for`` over it raises: an item's error, as
                itself, or the map's ``TaskTimeoutError``.
        """
        results = self._async_results
        if results is None:
            results = self._async_started()
        return results.__anext__()  # the generator's own awaitable: no frame of ours per result

    async def aclose(self) -> None:
        """Stop, awaited: as :meth:`close`, the generator ``async for`` reads closed too.

        What ``aiter()`` of an imap gave, an async generator, had it: the chunks
        in flight are cancelled, and every ``anext()`` after it raises
        ``StopAsyncIteration``. Awaited as another coroutine waits for the next
        result (the generator runs), it stops the map as :meth:`close` does,
        and ``anext()`` and ``async for`` read an ended generator from then
        on: that coroutine resumes only later, and until then the running one
        raised "asynchronous generator is already running" to an ``anext()``
        right after this ``aclose()``.
        """
        results = self._async_results
        if results is None or getattr(results, "ag_running", False):
            self.close()
            if results is not None:
                self._async_results = _nothing()
            return
        self._closed = True
        await results.aclose()  # type: ignore[attr-defined]  # (an async generator: _each_async, _nothing)

    def _async_started(self) -> AsyncIterator[R]:
        """The async generator ``async for`` and ``anext()`` read, made at the first of them.

        Made under the lock that :meth:`_start` holds as it makes the one
        ``next()`` reads: a first ``next()`` on one thread and a first
        ``async for`` on another at once each found none of the other's yet,
        and made their own on the one map; the second took every item, and
        the first ended with none, neither told.

        Raises:
            RuntimeError: it is iterated with ``for`` or ``next()`` already, or
                another thread's first ``next()`` makes that generator at this moment.
        """
        if self._async_results is not None:
            return self._async_results
        with reading_alone(self._starting, "imap()"):
            if self._async_results is not None:
                return self._async_results
            if self._closed_unstarted:
                self._async_results = _nothing()
            elif self._results is not None:
                raise RuntimeError("this imap is iterated already; call mp.imap(...) again")
            else:
                self._async_results = _each_async(self._mapper.chunks_async(), self._mapper)
                if self._closed:  # close() on another thread may have found none yet, as for next()
                    self._closed_as_started()
            return self._async_results


def _no_results() -> Iterator[Any]:
    """What iterating an imap closed before it started gives: no result."""
    return
    yield


async def _nothing() -> AsyncIterator[Any]:
    """:func:`_no_results` for ``async for``."""
    return
    yield


async def _each_async(chunks: AsyncIterator[list[Any]], mapper: _Mapper) -> AsyncIterator[Any]:
    try:
        async for chunk in chunks:
            chunk.reverse()
            while chunk and not mapper._closed_elsewhere:  # closed: not the rest of the chunk either
                yield chunk.pop()  # an item handed out is no longer held here
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


#: What an item's StopAsyncIteration becomes in ``async for`` over a map (PEP 525), as STOP_ITERATION in a loop.
STOP_ASYNC_ITERATION = "the map's function raised StopAsyncIteration, which no async for can pass on (PEP 525)"


#: The same, where the map's input raised it: named as the function's, it sent users to a function that never raised.
STOP_ASYNC_ITERATION_INPUT = "the map's input raised StopAsyncIteration, which no async for can pass on (PEP 525)"


#: What an item's own asyncio.CancelledError becomes in ``async for`` over a map, as ``await handle`` makes it.
CANCELLED_ERROR = (
    "the map's function raised asyncio.CancelledError, which an async for would pass on as the cancellation "
    "of the coroutine that iterates; nothing cancelled the map or that coroutine"
)


def _stop_async_iteration_failure(raised: BaseException, message: str = STOP_ASYNC_ITERATION) -> RuntimeError:
    """The error ``async for`` over a map raises for ``raised``: a ``RuntimeError`` it caused, with its notes.

    No async generator can raise a ``StopAsyncIteration`` (PEP 525): Python
    made it "async generator raised StopAsyncIteration", which named a
    generator of the library's and left the item's note in its cause only.
    Iterated with ``for``, or collected, the map raises it as itself.
    ``message`` names where it came from: the map's function (an item), or
    its input (``STOP_ASYNC_ITERATION_INPUT``); or, with ``CANCELLED_ERROR``,
    that ``raised`` is an item's own ``asyncio.CancelledError``, which
    ``async for`` would pass on as the consumer's cancellation.
    """
    failure = RuntimeError(message)
    for note in getattr(raised, "__notes__", ()):
        add_note(failure, note)
    return failure


def _chunk_runner(
    name: str, backend: BackendOption | Backend | None, limiter: Limiter | None, priority: int = 0
) -> ParallelFunction[..., list[Any]]:
    """The task that runs one chunk of a map of ``name`` on ``backend``, admitted through ``limiter``, queued at ``priority``.

    ``limiter`` is the ``max_concurrent`` limiter of the ``@parallel`` function
    mapped, itself: its direct calls and the chunks of its maps share its
    slots, as its ``options()`` copies do. A chunk runs its items one after
    another, so at most that many chunks at once is at most that many items.
    ``priority`` is that function's too: its chunks queue as its calls would.

    Building one costs tens of microseconds (signature inspection, metrics
    record, GIL watch), ten times a one-item map, so those on a named backend
    are kept: one per (name, backend name, limiter, priority), which also gives the map of a
    function one GIL watch across calls, as a ``@parallel`` function has. Metrics
    are records per name anyway. An executor or adapter is not kept, so that the
    cache never holds one alive (a limiter it keeps is a counter, nothing more).
    """
    if backend is None or isinstance(backend, str):
        return _named_chunk_runner(name, backend, limiter, priority)
    return _new_chunk_runner(name, backend, limiter, priority)


@functools.lru_cache(maxsize=256)  # bounded: lambdas and closures can make many names
def _named_chunk_runner(
    name: str, backend: str | None, limiter: Limiter | None, priority: int
) -> ParallelFunction[..., list[Any]]:
    return _new_chunk_runner(name, backend, limiter, priority)


def _new_chunk_runner(
    name: str, backend: BackendOption | Backend | None, limiter: Limiter | None, priority: int
) -> ParallelFunction[..., list[Any]]:
    options = {"name": f"{name} [map]", "backend": backend, "priority": priority}
    runner: ParallelFunction[..., list[Any]] = ParallelFunction(run_chunk, options, limiter)
    watch = runner._spec.cpu_watch
    if watch is not None:
        watch.remedy = MAP_REMEDY
    return _owned(runner)


def _owned(runner: ParallelFunction[..., list[Any]]) -> ParallelFunction[..., list[Any]]:
    """``runner``, whose tasks' failures the map reads, or drops as it stops: none is logged as unread (``TaskObserver.owned``)."""
    runner._spec.owned = True
    return runner


def _start(
    fn: Callable[[Any], Any],
    iterable: Iterable[Any],
    chunksize: int | None,
    ordered: bool,
    progress: ProgressOption,
    max_in_flight: int | None,
    timeout: float | None,
    on_error: OnError,
    backend: BackendOption | None,
) -> _Mapper:
    """Check the options of a map (raising at the call) and set it up."""
    plain, items, total, chunk_task, name, timeout, chunksize, max_in_flight = _checked(
        fn, iterable, chunksize, ordered, progress, max_in_flight, timeout, on_error, backend
    )
    return _Mapper(
        plain, items, total, chunk_task, chunksize, ordered, progress, max_in_flight, timeout, on_error, name
    )


def _checked(
    fn: Callable[[Any], Any],
    iterable: Iterable[Any],
    chunksize: int | None,
    ordered: bool,
    progress: ProgressOption,
    max_in_flight: int | None,
    timeout: float | None,
    on_error: OnError,
    backend: BackendOption | None,
    given_as: tuple[str, str] = ("fn", "iterable"),
) -> tuple[
    Callable[[Any], Any], _Items, int | None, ParallelFunction[..., list[Any]], str, float | None, int | None, int | None
]:
    """The options of a map, checked (raising at the call): the function to apply, the items,
    their number if known, the task that runs a chunk, the name to report, the timeout as a float,
    and the chunk size and the bound on chunks in flight as plain ints (NumPy's are accepted too).
    ``given_as`` names the function and the items in their errors as the caller gave them
    (``parallel_map``'s 0.2 names ``func=`` and ``items=``)."""
    plain, name, own = _plain_function(fn, given_as[0])
    if on_error != "raise":
        check_on_error(on_error)
    timeout = check_wait_timeout(timeout)
    if chunksize is not None:
        chunksize = check_count(chunksize, "chunksize")
    if max_in_flight is not None:
        max_in_flight = check_count(max_in_flight, "max_in_flight")
    if ordered is not True and ordered is not False:
        raise TypeError(f"ordered must be a bool, got {ordered!r}")
    if backend is not None:
        check_backend(backend)
    # A list or range is sliced, not iterated; anything else raises TypeError here if not iterable.
    try:
        items: _Items = iterable if _is_sliced(iterable) else iter(iterable)
    except TypeError:
        if hasattr(type(iterable), "__iter__"):  # iterable, and its own __iter__ raised: that error is the user's
            raise
        raise TypeError(
            f"{given_as[1]} must be an iterable of the items to map (a list, a range, a generator...), "
            f"got {iterable!r} ({type(iterable).__name__})"
        ) from None
    try:
        total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
    except OverflowError:  # a range longer than sys.maxsize: sliced all the same, of unknown length
        total = None
    except TypeError:  # a __len__ that says it has none (a stream's): map() and list() read it, as length_hint does
        total = None
    if own is None:
        chunk_task = _chunk_runner(name, backend, None)
    else:
        chunk_task = _chunk_runner(name, backend if backend is not None else own.backend, own.limiter, own.priority)
    if progress is not False:
        check_progress(progress, total)  # a total of its own only where the input has no length
    return plain, items, total, chunk_task, name, timeout, chunksize, max_in_flight


def _each(chunks: Iterator[list[R]]) -> Iterator[R]:
    # A generator of its own (not itertools.chain), so that closing it early
    # closes the mapper and cancels the chunks in flight.
    try:
        for chunk in chunks:
            chunk.reverse()
            while chunk:
                yield chunk.pop()  # an item handed out is no longer held here
    finally:
        chunks.close()  # type: ignore[attr-defined]


# A @parallel function maps as its plain function, and an async function's coroutines run to
# their end: their results, not handles or coroutines (each first).
@overload
def parallel_map(
    fn: _RunToResults[T, R],
    iterable: Iterable[T],
    *,
    chunksize: int | None = None,
    ordered: bool = True,
    progress: ProgressOption = False,
    max_in_flight: int | None = None,
    timeout: float | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    backend: BackendOption | None = None,
) -> list[R]: ...
@overload
def parallel_map(
    fn: Callable[[T], R],
    iterable: Iterable[T],
    *,
    chunksize: int | None = None,
    ordered: bool = True,
    progress: ProgressOption = False,
    max_in_flight: int | None = None,
    timeout: float | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    backend: BackendOption | None = None,
) -> list[R]: ...
@overload
def parallel_map(
    fn: _RunToResults[T, R],
    iterable: Iterable[T],
    *,
    chunksize: int | None = None,
    ordered: bool = True,
    progress: ProgressOption = False,
    max_in_flight: int | None = None,
    timeout: float | None = None,
    on_error: Literal["none"],
    backend: BackendOption | None = None,
) -> list[R | None]: ...
@overload
def parallel_map(
    fn: Callable[[T], R],
    iterable: Iterable[T],
    *,
    chunksize: int | None = None,
    ordered: bool = True,
    progress: ProgressOption = False,
    max_in_flight: int | None = None,
    timeout: float | None = None,
    on_error: Literal["none"],
    backend: BackendOption | None = None,
) -> list[R | None]: ...
@overload
def parallel_map(
    fn: _RunToResults[T, R],
    iterable: Iterable[T],
    *,
    chunksize: int | None = None,
    ordered: bool = True,
    progress: ProgressOption = False,
    max_in_flight: int | None = None,
    timeout: float | None = None,
    on_error: OnError,
    backend: BackendOption | None = None,
) -> list[R | None]: ...
@overload
def parallel_map(
    fn: Callable[[T], R],
    iterable: Iterable[T],
    *,
    chunksize: int | None = None,
    ordered: bool = True,
    progress: ProgressOption = False,
    max_in_flight: int | None = None,
    timeout: float | None = None,
    on_error: OnError,
    backend: BackendOption | None = None,
) -> list[R | None]: ...
@overload
def parallel_map(
    *,
    func: _RunToResults[T, R],
    items: Iterable[T],
    chunksize: int | None = None,
    ordered: bool = True,
    progress: ProgressOption = False,
    max_in_flight: int | None = None,
    timeout: float | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    backend: str | None = None,
) -> list[R]: ...
@overload
def parallel_map(
    *,
    func: Callable[[T], R],
    items: Iterable[T],
    chunksize: int | None = None,
    ordered: bool = True,
    progress: ProgressOption = False,
    max_in_flight: int | None = None,
    timeout: float | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    backend: str | None = None,
) -> list[R]: ...
@overload
def parallel_map(
    *,
    func: _RunToResults[T, R],
    items: Iterable[T],
    chunksize: int | None = None,
    ordered: bool = True,
    progress: ProgressOption = False,
    max_in_flight: int | None = None,
    timeout: float | None = None,
    on_error: OnError,
    backend: str | None = None,
) -> list[R | None]: ...
@overload
def parallel_map(
    *,
    func: Callable[[T], R],
    items: Iterable[T],
    chunksize: int | None = None,
    ordered: bool = True,
    progress: ProgressOption = False,
    max_in_flight: int | None = None,
    timeout: float | None = None,
    on_error: OnError,
    backend: str | None = None,
) -> list[R | None]: ...
def parallel_map(
    fn: Any = _MISSING,
    iterable: Any = _MISSING,
    *,
    func: Any = _MISSING,
    items: Any = _MISSING,
    chunksize: int | None = None,
    ordered: bool = True,
    progress: ProgressOption = False,
    max_in_flight: int | None = None,
    timeout: float | None = None,
    on_error: OnError = "raise",
    backend: BackendOption | None = None,
) -> list[Any]:
    """Apply ``fn`` to every item in parallel and return the results as a list.

    The options are those of :func:`imap`. Equal to ``list(map(fn, iterable))``
    when ``ordered`` is true and nothing fails. ``func=`` and ``items=`` are
    the makeparallel 0.2 names of ``fn`` and ``iterable``; an error names the
    argument as it was given.

    Returns:
        ``list[R]``, or ``list[R | None]`` with ``on_error="none"`` (type
        checkers see which, from the literal).

    Raises:
        TypeError, ValueError, ImportError, TaskTimeoutError: as :func:`imap`;
            also when the function or the items are missing, or given under
            both names.
        TaskSerializationError: on worker processes, the function or an
            item cannot be pickled, whatever ``on_error`` says; the error names
            which. An item's is raised once the items before it ran.
        Exception: with ``on_error="raise"``, the first item error, as itself.
    """
    given_as = ("fn", "iterable")
    if fn is _MISSING or iterable is _MISSING or func is not _MISSING or items is not _MISSING:
        given_as = ("fn" if func is _MISSING else "func", "iterable" if items is _MISSING else "items")
        fn = _one_of(fn, func, "fn", "func")
        iterable = _one_of(iterable, items, "iterable", "items")
    plain, rest, total, chunk_task, name, timeout, chunksize, max_in_flight = _checked(
        fn, iterable, chunksize, ordered, progress, max_in_flight, timeout, on_error, backend, given_as
    )
    if total == 1 and progress is False and timeout is None:
        if _is_sliced(rest):  # an exact list or range: its length is the truth
            return _map_one_item(plain, rest[0], chunk_task, on_error)
        reader = iter(rest)
        read = list(itertools.islice(reader, 2))  # trust no other __len__: a second item goes the long way
        if len(read) == 1:
            return _map_one_item(plain, read[0], chunk_task, on_error)
        rest = itertools.chain(read, reader)
    mapper = _Mapper(
        plain, rest, total, chunk_task, chunksize, ordered, progress, max_in_flight, timeout, on_error, name,
        first_wave=True,
    )
    results: list[Any] = []
    for chunk in mapper.chunks():
        results.extend(chunk)
    return results


def _map_one_item(
    fn: Callable[[Any], Any], item: Any, chunk_task: ParallelFunction[..., list[Any]], on_error: OnError
) -> list[Any]:
    """``parallel_map`` of one item, with no progress display and no timeout: its one task.

    What keeps many chunks in flight (a :class:`_Mapper`, its chunk sizer, the
    read-ahead bounds) cost four times the task itself here
    (``benchmarks/map_scaling.py``); a map of one item needs none of it.
    """
    keep_going = on_error != "raise"
    chunk: list[Any] = []
    sent_again = False
    while not chunk:  # empty only where its worker died before the item started: it runs again, once
        try:
            handle = chunk_task(fn, [item], 0, keep_going)
        except TaskSerializationError as error:
            _raise_naming_the_item(error, fn, [item], 0)
        try:
            if current_task() is not None:  # queued, it runs here, cancelled with the task (as a longer map's chunks)
                handle._run_owned_here_if_queued()
            chunk = chunk_results(handle)
        except CallUnpickled as unpickled:  # on a worker process: the item's unpickling raised, or the function's
            _make_sure_it_unpickles(fn, chunk_task, keep_going)
            chunk = after_unpickled(unpickled.error, item, 0, keep_going)
        except WorkerCrashedError as error:  # on a worker process: the item's failure, or its crash
            chunk, _ = after_crash(error, [item], 0, keep_going, sent_again)
            sent_again = True
        except TaskSerializationError as error:  # its result, or the item's error, could not be unpickled here
            chunk, _ = after_unreadable(error, [item], 0, keep_going)
        except BaseException:  # Ctrl-C, or the item's error: the task must not go on
            cancel_and_stop([handle])  # as a longer map's chunks in flight: its worker too, if it runs on
            raise
    if keep_going:
        return _resolve_failures(chunk, on_error == "skip")
    return list(chunk) if type(chunk) is TimedResults else chunk  # the list the caller is promised


# A chunk of no items that tells whether a map's function unpickles on a worker: before the map's chunks.
_PROBE_PRIORITY = 1 << 30
_PROBE_DEATHS = 3  # such chunks whose worker died before they told, before the map gives up with the last death


def _make_sure_it_unpickles(fn: Callable[[Any], Any], chunk_task: ParallelFunction[..., list[Any]], keep_going: bool) -> None:
    """Raise, as the map's own error, what unpickling ``fn`` on a worker raises, if it does.

    A chunk its worker could not unpickle ran none of its items, and which of
    the map's function and the chunk's items raised is not known: a chunk of
    no items, run before any other, tells. Where the function is at fault the
    map fails, whatever ``on_error`` says: not each item with its error.

    Raises:
        Exception: the error unpickling ``fn`` raised (:func:`_function_failed`).
    """
    for check in range(_PROBE_DEATHS):
        probe = _probe_task(chunk_task)(fn, [], 0, keep_going)
        try:
            chunk_results(probe)
            return
        except CallUnpickled as unpickled:
            _function_failed(unpickled.error)
        except WorkerCrashedError as error:
            if check + 1 == _PROBE_DEATHS:
                _probes_died(error)
        except BaseException:
            cancel_and_stop([probe])
            raise


def _probe_task(chunk_task: ParallelFunction[..., list[Any]]) -> ParallelFunction[..., list[Any]]:
    """``chunk_task`` for a chunk of no items: it runs before any chunk of items queued."""
    return _owned(chunk_task.options(priority=_PROBE_PRIORITY))


def _halves(count: int, budget: float | None) -> list[tuple[int, int, float | None]]:
    """``count`` items cut in two (one, where they are one), each piece under ``budget``: for :meth:`_Mapper._start_in_place`."""
    half = count // 2
    return [(0, half, budget), (half, count, budget)] if count > 1 else [(0, count, budget)]


def _probes_died(error: WorkerCrashedError) -> NoReturn:
    """Raise ``error``, the death of the worker of the last chunk of no items that was to tell whether the function unpickles."""
    add_note(
        error,
        f"makeparallel: the map could not learn whether its function unpickles on a worker process: the worker of "
        f"each of {_PROBE_DEATHS} chunks of no items sent to tell died",
    )
    raise error


def _function_failed(error: BaseException) -> NoReturn:
    """Raise ``error``, which unpickling the map's function on a worker raised, saying so."""
    add_note(error, "makeparallel: the map's function could not be unpickled on a worker process")
    raise error


def _raise_naming_the_item(
    error: TaskSerializationError, fn: Callable[[Any], Any], items: Sequence[Any], start: int
) -> NoReturn:
    """Raise ``error``, a chunk's that could not be pickled, as the map's function or the item at fault cannot be.

    Else the error named the chunk task's argument (``argument 0 (method)`` for
    a method of an object holding a lock, ``argument 1 (list)`` for an item),
    not what the map was given. The function is tried first, as the chunk
    pickles it first: then every chunk would fail, whatever its items.
    """
    raise _unsendable_item(error, fn, items, start)[1] from error


def _unsendable_item(
    error: TaskSerializationError, fn: Callable[[Any], Any], items: Sequence[Any], start: int
) -> tuple[int, TaskSerializationError]:
    """The offset in ``items`` (a chunk that could not be pickled) of the item at fault, and the error naming it.

    The first item that cannot be pickled alone; else, where each can be, the
    first that the chunk cannot be pickled with, the items before it in it
    (found by halving: the first ``k`` pickle together, the first ``k + 1``
    do not), as with a recursion limit reached by the chunk as a whole or an
    object whose pickling fails once it was seen in the same pickle. Where the
    chunk pickles now (its failure does not repeat), no item can be named:
    offset 0 and an error saying the chunk could not be. The error returned
    has ``error`` (the submission's) as its cause.

    Raises:
        TaskSerializationError: the map's function cannot be pickled
            (:func:`refuse_unsendable_function`): every chunk would fail.
    """
    from . import _serialization

    shown = fn.__wrapped__ if type(fn) is Awaited else fn
    refuse_unsendable_function(fn, f"the map's function {_describe(shown)}", error)
    for offset, item in enumerate(items):
        try:
            _serialization.dumps(item)
        except Exception as problem:
            return offset, caused(
                f"{describe_item(start + offset, item)} of the map cannot be sent to a worker process: "
                f"{_described(problem)}. Every item must be picklable; backend='thread' needs no pickling",
                error,
            )
    found = first_unsendable_together(fn, items)
    if found is None and too_deep(error):
        return 0, caused(
            f"the chunk of items {start} to {start + len(items) - 1} of the map could not be sent to a worker "
            f"process: it nests too deep to pickle ({_described(error.__cause__ or error)}), though each item "
            f"alone can be pickled. {TOO_DEEP}",
            error,
        )
    if found is None:
        return 0, caused(
            f"the chunk of items {start} to {start + len(items) - 1} of the map could not be sent to a worker "
            f"process ({_described(error.__cause__ or error)}), though each item alone can be pickled, and the "
            "chunk could be when tried again: its pickling does not fail the same way twice (an object whose "
            "pickling depends on what was pickled before it). Make the items' pickling repeatable, pass "
            "chunksize=1 to send each item alone, or use backend='thread', which needs no pickling",
            error,
        )
    low, failed = found
    if too_deep(failed):
        return low, caused(
            f"{describe_item(start + low, items[low])} of the map cannot be sent to a worker process in its "
            f"chunk: it nests too deep to pickle ({_described(failed)}), though alone it can be pickled. {TOO_DEEP}",
            error,
        )
    return low, caused(
        f"{describe_item(start + low, items[low])} of the map cannot be sent to a worker process with the "
        f"items before it in its chunk (items {start} to {start + low}): {_described(failed)}. Alone it "
        "can be pickled, but a chunk's items are pickled together (a recursion limit reached by the chunk "
        "as a whole, an object shared by items that pickles only once); pass chunksize=1 to send each item "
        "alone, or use backend='thread', which needs no pickling",
        error,
    )


def _described(problem: BaseException) -> str:
    """``RecursionError: maximum recursion depth exceeded``: an error, as a message quotes it."""
    return f"{type(problem).__name__}: {problem}"


def _ran_for(handle: AsyncHandle[list[Any]], results: list[Any]) -> float:
    """Seconds chunk ``handle``, which gave ``results``, worked: as its worker timed it on another executor.

    Elsewhere the handle's clock runs from the submission (the executor does
    not say when a chunk starts), round trip and queue included: read as the
    items' work, they shrank the chunks to one item (:class:`TimedResults`).
    """
    if type(results) is TimedResults:
        return results.seconds
    return handle._finished_at - handle._started_at  # type: ignore[operator]


def _resolve_failures(chunk: list[Any], skip: bool) -> list[Any]:
    """A chunk's results with its failures left out (``skip``) or ``None`` in their place."""
    if skip:
        return [r for r in chunk if type(r) is not _Failure]
    return [None if type(r) is _Failure else r for r in chunk]


def _one_of(value: Any, alias: Any, name: str, alias_name: str) -> Any:
    """The argument given as ``name`` or as its 0.2 name ``alias_name``, exactly once."""
    if value is _MISSING and alias is _MISSING:
        raise TypeError(f"parallel_map() needs {name} (or {alias_name}=, its 0.2 name)")
    if value is not _MISSING and alias is not _MISSING:
        raise TypeError(f"parallel_map() got both {name} and {alias_name}=; they are the same argument")
    return alias if value is _MISSING else value


class _Mapper:
    """One map in progress: reads chunks, keeps them in flight, hands out results."""

    def __init__(
        self,
        fn: Callable[[Any], Any],
        items: _Items,
        total: int | None,
        chunk_task: ParallelFunction[..., list[Any]],
        chunksize: int | None,
        ordered: bool,
        progress: ProgressOption,
        max_in_flight: int | None,
        timeout: float | None,
        on_error: OnError,
        name: str,
        first_wave: bool = False,
    ) -> None:
        backend = get_backend(chunk_task._spec.backend)
        workers = backend.worker_count()
        limiter = chunk_task._spec.limiter
        if limiter is not None:  # the function's max_concurrent: no more chunks than that run at once
            limit = limiter.limit_here()
            if limit is not None:
                workers = min(workers, limit)
        self._fn = fn
        self._items = items
        self._total = total
        self._chunk_task = chunk_task
        self._ordered = ordered
        self._keep_going = on_error != "raise"
        self._skip = on_error == "skip"
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        # Enough chunks in flight to keep every worker (and the consumer) busy.
        self._max_chunks = 2 * workers + 2
        self._max_items = max_in_flight if max_in_flight is not None else _MAX_CHUNK * self._max_chunks
        # The default bound is in bytes too; an explicit max_in_flight is the user's own.
        self._bytes_bounded = max_in_flight is None
        self._bytes_per_item = 0.0  # estimated from the chunks read so far; 0 until one was
        self._min_items = workers + 1  # however large the items, enough to keep workers busy
        # Several chunks must fit in max_in_flight, or there is nothing to overlap.
        self._sizer = _ChunkSizer(chunksize, total, workers, max(1, self._max_items // self._max_chunks), first_wave)
        self._progress_option = progress
        self._name = name
        self._progress: Progress | None = None
        self._in_flight: deque[tuple[AsyncHandle[list[Any]], int]] = deque()
        self._items_in_flight = 0
        # Each chunk in flight's first item's index, items and time budget.
        self._chunk_items: dict[int, tuple[int, Sequence[Any], float | None]] = {}
        self._went_on: set[int] = set()  # chunks in flight whose rest went on before their turn (_go_on)
        self._closed_elsewhere = False  # closed from another thread than the one iterating (close_elsewhere)
        self._read_by_async_for = False  # (chunks_async): its timeout is an asyncio.TimeoutError too (_time_out)
        # Chunks in flight that are the last piece of the rest of a chunk that stopped at its time budget,
        # under a budget again (_continue): its items are slow, and it ends only after its first one. The
        # map's thread never runs one itself: while it ran that item no other chunk that stopped went on
        # and the workers idled, and as each such piece was still queued when the map looked, every slow
        # item after the first wave ran in the map's thread (1,000 items of which ten slept 0.5 s took
        # 4.5 s on two threads, against 2.5 s on two processes). Unless no worker takes it
        # (_no_worker_takes): with every worker busy until the map returned (a task waiting on it,
        # on a pool of one thread), the map waited for good, where it had run every chunk itself.
        self._slow_rests: set[int] = set()
        self._sent_again: set[int] = set()  # items of one-item chunks run again after a death before they began
        self._read = 0
        # The chunk read next and its time budget, where its wait for a slot ended as the next result was ready (_send).
        self._unsent: tuple[list[Any] | range, float | None] | None = None
        self._until_ready = UntilReady(self._next_ready, self._chunks_in_flight)  # ends such a wait (the chunks' ends wake it)
        self._exhausted = False
        # What ends the input early, raised after its items' results: what reading it raised, or the
        # TaskSerializationError of an item that cannot be sent to a worker process (_send_before_unsendable).
        self._input_error: Exception | None = None
        self._function_unpickles = False  # on a worker process: known once a chunk gave results (_after_unpickled)
        self._probed = False  # a chunk of no items was sent to learn it, and has not died
        self._probe_deaths = 0  # such chunks whose worker died before they told
        self._completions: Completions | None = None

    def chunks(self) -> Iterator[list[Any]]:
        """The results, a chunk's list at a time, failures already skipped or replaced."""
        finished = False
        self._progress = open_progress(self._progress_option, self._total, self._name)
        try:
            self._fill()
            while self._in_flight and not self._closed_elsewhere:
                entry = self._next_done()
                try:
                    chunk, taken = self._take(entry)
                except KeyboardInterrupt:  # Ctrl-C: nothing more is handed out
                    raise
                except BaseException:  # the results of the chunk's items before its error first (SystemExit too)
                    if self._closed_elsewhere:  # its cancel, most likely: the map ends as closed
                        return
                    if before := self._results_before(entry[0]):
                        yield before
                    raise
                yield chunk
                # Read more only once the consumer took this chunk: what is read
                # and not yet handed out never exceeds max_in_flight.
                self._items_in_flight -= taken
                self._fill()
            if self._closed_elsewhere:
                return
            finished = True
            if self._input_error is not None:
                raise self._input_error
        finally:
            # Closed as the interpreter clears its modules (an imap left half read in a
            # global): the exit hook ran already, and waited for the chunks or cancelled
            # them and stopped the workers; nothing is left to stop, and a cancel there
            # failed on its imports ("Exception ignored", sys.meta_path is None).
            if not finished and not sys.is_finalizing():
                # an error, Ctrl-C, a timeout, or the consumer stopped: nothing of it goes on
                cancel_and_stop([handle for handle, _ in self._in_flight])
            if self._progress is not None:
                self._progress.close()

    async def chunks_async(self) -> AsyncIterator[list[Any]]:
        """:meth:`chunks` for asyncio code: awaits the chunks instead of blocking."""
        import asyncio

        from ._async_collect import AsyncCompletions
        from ._await import asyncio_timeout, cancel_crossing, ended

        finished = cancelled = False
        self._read_by_async_for = True
        self._progress = open_progress(self._progress_option, self._total, self._name)
        try:
            if not self._ordered:
                self._completions = AsyncCompletions(self._remaining())  # type: ignore[assignment]
            self._fill()
            while self._in_flight and not self._closed_elsewhere:
                if self._ordered:
                    entry = self._in_flight[0]
                    try:
                        await asyncio.wait_for(ended(entry[0]), self._remaining())
                    except asyncio.TimeoutError:
                        # It may have ended in time, its wake-up not yet run by the loop (always
                        # so with no time left): handed out, as chunks() hands it out.
                        if not entry[0].is_ready():
                            self._time_out()
                else:
                    try:
                        done = await self._completions.next()  # type: ignore[union-attr]
                    except TaskTimeoutError:
                        self._time_out()
                    entry = next(entry for entry in self._in_flight if entry[0] is done)
                try:
                    chunk, taken = self._take(entry)
                except KeyboardInterrupt:  # as in chunks()
                    raise
                except BaseException as error:  # as in chunks()
                    if self._closed_elsewhere:
                        return
                    if before := self._results_before(entry[0]):
                        yield before
                    if isinstance(error, StopAsyncIteration):
                        raise _stop_async_iteration_failure(error) from error
                    if isinstance(error, asyncio.CancelledError):  # the item's own: _take() awaits nothing
                        raise _stop_async_iteration_failure(error, CANCELLED_ERROR) from error
                    if isinstance(error, TaskTimeoutError):  # the item's own, as an await of its task raises it
                        asyncio_timeout(error)
                    raise
                yield chunk
                self._items_in_flight -= taken
                self._fill()
            if self._closed_elsewhere:
                return
            finished = True
            if self._input_error is not None:
                if isinstance(self._input_error, StopAsyncIteration):
                    failure = _stop_async_iteration_failure(self._input_error, STOP_ASYNC_ITERATION_INPUT)
                    raise failure from self._input_error
                raise self._input_error
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if cancelled:  # as a cancelled await stops its task (async_cancel)
                cancel_crossing([handle for handle, _ in self._in_flight])
            elif not finished and not sys.is_finalizing():  # (at teardown: as in chunks())
                # an error, a timeout, or the consumer stopped: as chunks() stops them
                cancel_and_stop([handle for handle, _ in self._in_flight])
            if self._progress is not None:
                self._progress.close()

    def close_elsewhere(self) -> None:
        """Stop the map from outside its loop (another thread, a progress callback): cancel its chunks in flight now.

        That thread's loop ends as it asks for its next chunk, reading no more
        input; its own ``finally`` then stops what it started meanwhile.
        """
        self._closed_elsewhere = True
        cancel_and_stop([handle for handle, _ in list(self._in_flight)])  # (listed in one C call: it may change)

    def _results_before(self, handle: AsyncHandle[list[Any]]) -> list[Any]:
        """The results of chunk ``handle``'s items before the one whose error stops the map: handed out first."""
        results = take_results_before(handle)
        # None kept (the chunk failed at its first item, or it gave its results and the progress
        # display raised): no call to the display, which would repeat its last count or raise again.
        if results and self._progress is not None:
            self._progress.advance(len(results))
        if self._keep_going:  # kept before an item's SystemExit (which on_error does not catch): its failures as on_error says
            results = _resolve_failures(results, self._skip)
        return results

    def _take(self, entry: tuple[AsyncHandle[list[Any]], int]) -> tuple[list[Any], int]:
        """The results of a chunk that ended (or its error), once counted and sized; and how many items they are.

        A chunk whose worker died gives its results up to its culprit's
        failure; a new chunk of its other items takes its place in flight,
        under the same time budget (a first chunk's other items can be half
        the map's). A chunk that stopped at its time budget gives those of the
        items it reached; the others run next, in its place (:meth:`_continue`),
        unless they went on before its turn (:meth:`_go_on`).
        """
        handle, size = entry
        rest: Sequence[Any] = ()  # the items a chunk stopped at its time budget did not reach
        rest_start = 0
        try:
            chunk = chunk_results(handle)
            self._function_unpickles = True
        except CallUnpickled as unpickled:  # on a worker process: an item's unpickling raised, or the function's
            start, items, budget = self._chunk_items[id(handle)]
            chunk, size = self._after_unpickled(entry, unpickled.error, items, start, budget)
        except WorkerCrashedError as error:  # on a worker process: finish the chunk without the culprit
            start, items, budget = self._chunk_items[id(handle)]
            if not items:  # the chunk of no items died before it told whether the function unpickles
                self._probed = False  # the next chunk that cannot be unpickled sends another (_after_unpickled)
                self._probe_deaths += 1
                if self._probe_deaths == _PROBE_DEATHS:
                    _probes_died(error)
                chunk, size = [], 0
            else:
                chunk, size = self._after_crash(entry, error, items, start, budget)
        except TaskSerializationError as error:  # on a worker process: results that cannot be unpickled here
            start, items, _ = self._chunk_items[id(handle)]
            chunk, size = after_unreadable(error, items, start, self._keep_going, handle)
            rest, rest_start = items[size:], start + size  # a chunk stopped at its budget: run the others
        else:
            if len(chunk) < size:
                start, items, _ = self._chunk_items[id(handle)]
                size = len(chunk)
                rest, rest_start = items[size:], start + size
        place = self._in_flight.index(entry)
        self._in_flight.remove(entry)  # only now: an interrupted get() still cancels it
        del self._chunk_items[id(handle)]
        self._slow_rests.discard(id(handle))
        if id(handle) in self._went_on:  # measured when its rest went on
            self._went_on.discard(id(handle))
        else:
            remaining = None if self._total is None else self._total - self._read
            self._sizer.observe(size, _ran_for(handle, chunk), remaining)
        if rest:
            self._continue(place, rest, rest_start)
        # No item done (a chunk of no items, one whose worker died before its first item, or
        # one stopped at its time budget before it): not a call with the count shown already.
        if size and self._progress is not None:
            self._progress.advance(size)
        if self._keep_going:
            chunk = _resolve_failures(chunk, self._skip)
        return chunk, size

    def _after_crash(
        self,
        entry: tuple[AsyncHandle[list[Any]], int],
        error: WorkerCrashedError,
        items: Sequence[Any],
        start: int,
        budget: float | None,
    ) -> tuple[list[Any], int]:
        """The results of chunk ``entry`` of ``items``, whose worker died, up to its culprit's failure; and how many.

        A new chunk of its other items takes its place in flight, under the
        same time budget.

        Raises:
            WorkerCrashedError: the culprit's, with ``on_error="raise"``.
        """
        handle = entry[0]
        try:
            chunk, size = after_crash(error, items, start, self._keep_going, start in self._sent_again)
        except WorkerCrashedError as failure:  # on_error="raise"
            crash = getattr(error, "_crash", None)
            if failure is not error and crash is not None:  # its culprit's: after the items that ended before it
                keep_results_before(handle, crash[0])
            raise
        if size < len(items):
            if not size and len(items) == 1:  # one item: it runs again once, then its unpickling is the culprit
                self._sent_again.add(start)
            # Its worker died before its first item: in halves; else the items after the culprit.
            pieces = _halves(len(items), budget) if not size else [(size, len(items), budget)]
            self._start_in_place(self._in_flight.index(entry), items, start, pieces)
        return chunk, size

    def _after_unpickled(
        self,
        entry: tuple[AsyncHandle[list[Any]], int],
        error: BaseException,
        items: Sequence[Any],
        start: int,
        budget: float | None,
    ) -> tuple[list[Any], int]:
        """The results of chunk ``entry`` of ``items``, which its worker could not unpickle; and how many items they are.

        None of its items ran, so they run again, in halves, in its place,
        until an item at fault is alone. Which of the map's function and its
        items is at fault, a chunk of no items tells, put in flight before
        them the first time (:meth:`_start_probe`), unless a chunk gave
        results already. Once the function is known to unpickle, a chunk of
        one item that could not be fails with the error (as ``on_error``
        says); a map whose function does not fails with the function's error.
        The map waits for them as for any chunk, under its deadline, and an
        ``async for`` loop's event loop goes on meanwhile.

        Raises:
            Exception: ``error``, naming the item, with ``on_error="raise"``; the
                function's own, where it does not unpickle.
        """
        if not items:  # the chunk of no items: the function itself did not unpickle
            _function_failed(error)
        if len(items) == 1 and self._function_unpickles:
            return after_unpickled(error, items[0], start, self._keep_going), 1
        place = self._in_flight.index(entry)
        if not self._function_unpickles and not self._probed:
            self._in_flight.insert(place, self._start_probe())
            place += 1
        # One item runs again alone, once the function is known to unpickle.
        self._start_in_place(place, items, start, _halves(len(items), budget))
        return [], 0

    def _start_probe(self) -> tuple[AsyncHandle[list[Any]], int]:
        """Submit a chunk of no items, before any other: it tells whether the map's function unpickles on a worker."""
        entry = self._start_chunk([], 0, None, _probe_task(self._chunk_task))
        assert entry is not None  # it waits for its slot
        self._probed = True
        return entry

    def _start_in_place(
        self, place: int, items: Sequence[Any], start: int, pieces: list[tuple[int, int, float | None]]
    ) -> None:
        """Start a chunk of ``items[low:high]`` under ``budget`` for each of ``pieces``, in flight at ``place`` on, in order."""
        for offset, (low, high, budget) in enumerate(pieces):
            entry = self._start_chunk(items[low:high], start + low, budget)
            assert entry is not None  # it waits for its slot
            self._in_flight.insert(place + offset, entry)
        self._time_out_past_deadline()  # (as they may have run here: see the method)

    def _continue(self, place: int, items: Sequence[Any], start: int) -> None:
        """Run the items a chunk left at its time budget, at its ``place`` in flight, in chunks of the measured size.

        Split evenly, into ``_max_chunks`` at most: where more would be needed
        (slow items), the last one takes the rest, under a budget again.
        """
        size = self._sizer.measured_size  # not the last wave's share of the items not read yet
        count = -(-len(items) // size)
        pieces: list[tuple[int, int, float | None]]
        if count > self._max_chunks:
            cut = (self._max_chunks - 1) * size
            pieces = [(low, low + size, None) for low in range(0, cut, size)]
            pieces.append((cut, len(items), _FIRST_WAVE_SECONDS))
        else:
            even = -(-len(items) // count)
            pieces = [(low, min(low + even, len(items)), None) for low in range(0, len(items), even)]
        self._start_in_place(place, items, start, pieces)
        if pieces[-1][2] is not None:
            self._slow_rests.add(id(self._in_flight[place + len(pieces) - 1][0]))

    def _start_chunk(
        self,
        items: Sequence[Any],
        start: int,
        budget: float | None,
        task: ParallelFunction[..., list[Any]] | None = None,
        until_ready: bool = False,
    ) -> tuple[AsyncHandle[list[Any]], int] | None:
        """Submit the chunk of ``items``, item ``start`` of the map the first, as ``task`` (the map's own); its entry in flight.

        Out of order, every chunk is followed as it ends; in order, once one has
        a time budget (a ``parallel_map``'s), so that its rest goes on at once.
        Past the map's deadline none starts: on the ``"sync"`` backend a chunk
        runs here, to its end, and nothing else would see the deadline pass.
        Its wait for a slot under a limit (``mp.set_max_concurrent_tasks``)
        ends at the deadline too: a chunk with no slot by then is not submitted.
        With ``until_ready``, it ends as the next result to hand out is ready
        as well (:class:`UntilReady`): then nothing is submitted, and ``None``
        is returned.

        Raises:
            TaskTimeoutError: the map's ``timeout`` has passed, before the chunk
                was submitted or as it waited for a slot.
            TaskSerializationError: on worker processes, the chunk cannot be
                pickled: the error names the map's function or the item at fault.
        """
        try:
            return self._submit_chunk(items, start, budget, task, until_ready)
        except TaskSerializationError as error:
            _raise_naming_the_item(error, self._fn, items, start)

    def _submit_chunk(
        self,
        items: Sequence[Any],
        start: int,
        budget: float | None,
        task: ParallelFunction[..., list[Any]] | None = None,
        until_ready: bool = False,
    ) -> tuple[AsyncHandle[list[Any]], int] | None:
        """:meth:`_start_chunk`, but a chunk that cannot be pickled raises the submission's ``TaskSerializationError`` as it is.

        A map's new chunk is sent so (:meth:`_send`): that error does not say
        which item is at fault, which :meth:`_send_before_unsendable` finds.
        """
        self._time_out_past_deadline()
        handle: AsyncHandle[list[Any]] | None
        try:
            handle = (task or self._chunk_task)._submit_until(
                self._deadline,
                (self._fn, items, start, self._keep_going, budget),
                {},
                self._until_ready if until_ready else None,
            )
        except NoSlotInTime:  # the deadline passed as it waited for a slot: not submitted
            handle = None
        except ResultReady:  # the next result is ready: handed out first, this chunk submitted after it
            return None
        if handle is None:
            self._time_out()  # not while handling NoSlotInTime: the map's error alone is shown
        self._chunk_items[id(handle)] = (start, items, budget)
        if not self._ordered or budget is not None or self._completions is not None:
            self._follow(handle)
        # Its end may make the next result ready while a later chunk waits for a slot.
        self._until_ready.follow(
            handle, global_limiter.limit is not None or (task or self._chunk_task)._spec.limiter is not None
        )
        return handle, len(items)

    def _go_on(self, handle: AsyncHandle[list[Any]]) -> None:
        """Run the rest of a chunk that stopped at its time budget before its turn to be handed out.

        Its results wait in order; its entry in flight is made the size of
        those, so that :meth:`_take` finds nothing left to run. A chunk that
        failed or whose worker died waits for its turn, as any.
        """
        entry = next((entry for entry in self._in_flight if entry[0] is handle), None)
        if entry is None or handle._state != SUCCEEDED:
            return
        results = handle.get()
        done = len(results)
        if done == entry[1]:
            return
        start, items, budget = self._chunk_items[id(handle)]
        place = self._in_flight.index(entry)
        self._in_flight[place] = (handle, done)
        self._went_on.add(id(handle))
        remaining = None if self._total is None else self._total - self._read
        self._sizer.observe(done, _ran_for(handle, results), remaining)
        self._continue(place + 1, items[done:], start + done)

    def _fill(self) -> None:
        """Read and submit chunks, as many as the bounds allow.

        With chunks in flight, a submission's wait for a slot under a limit
        ends as the next result is ready (:meth:`_send`): the map hands it
        out, then goes on. Waiting on held back the results ready meanwhile,
        and for good where the submitter holding the slot waited for what the
        consumer does with the next one.
        """
        if self._closed_elsewhere or (self._unsent is not None and not self._send(self._unsent)):
            return
        # (Looked at each turn: on the "sync" backend a chunk runs here as it starts, maybe as close() came.)
        while not self._closed_elsewhere and not self._exhausted and len(self._in_flight) < self._max_chunks:
            size = self._sizer.next_size()
            if self._bytes_bounded and not self._bytes_per_item and size > 1:
                self._peek()  # a first chunk of many items: their size bounds how many
            allowed = self._max_items
            if self._bytes_per_item:
                allowed = self._item_budget()
                size = min(size, max(1, allowed // self._max_chunks))  # several chunks fit
            size = min(size, allowed - self._items_in_flight)
            if size <= 0:
                return
            chunk = self._read_chunk(size)
            if not chunk:
                self._exhausted = True
                return
            if self._bytes_bounded:
                self._measure_items(chunk)
            if not self._send((chunk, self._sizer.budget)):
                return

    def _send(self, unsent: tuple[list[Any] | range, float | None]) -> bool:
        """Submit a chunk read, with its time budget; return whether it was (else it is kept in :attr:`_unsent`).

        Its wait for a slot ends as the next result is ready, where a chunk is in flight.
        A chunk that cannot be pickled is cut before its item at fault (:meth:`_send_before_unsendable`).

        Raises:
            TaskTimeoutError: as :meth:`_start_chunk`.
            TaskSerializationError: as :meth:`_send_before_unsendable`.
        """
        chunk, budget = unsent
        try:
            entry = self._submit_chunk(chunk, self._read, budget, until_ready=bool(self._in_flight))
        except TaskSerializationError as error:  # on worker processes: an item, or the function, cannot be pickled
            return self._send_before_unsendable(chunk, budget, error)
        if entry is None:
            self._unsent = unsent
            return False
        self._unsent = None
        self._in_flight.append(entry)
        self._read += len(chunk)
        self._items_in_flight += len(chunk)
        self._time_out_past_deadline()  # (as the chunk may have run here: see the method)
        return True

    def _send_before_unsendable(
        self, chunk: list[Any] | range, budget: float | None, error: TaskSerializationError
    ) -> bool:
        """Submit the items of ``chunk``, which could not be pickled, before its first that cannot be; as :meth:`_send`.

        That item ends the input there, as an error reading it does
        (:meth:`_read_into`): its ``TaskSerializationError``, which names it,
        is raised once the results of the items before it are handed out
        (:meth:`chunks`). The map raised it at once, and lost the results of
        the chunks in flight and of the items of its chunk before it.

        The item at fault may pickle alone: a chunk's items are pickled
        together (:func:`_unsendable_item`). Where no item can be named, the
        chunk's own error ends the input before its first item.

        Raises:
            TaskSerializationError: the map's function cannot be pickled (every
                chunk would fail); ``TaskTimeoutError`` as :meth:`_start_chunk`.
        """
        offset, self._input_error = _unsendable_item(error, self._fn, chunk, self._read)
        self._exhausted = True  # read no further: no item after it runs
        if offset:
            return self._send((chunk[:offset], budget))
        self._unsent = None
        return True

    def _chunks_in_flight(self) -> list[AsyncHandle[list[Any]]]:
        """The chunks in flight, whose ends a wait for a slot may be woken by (:class:`UntilReady`)."""
        return [handle for handle, _ in self._in_flight]

    def _next_ready(self) -> bool:
        """Whether the result to hand out next is ready (asked under a limiter's lock: it takes none)."""
        if not self._in_flight:
            return False
        if self._ordered:
            return self._in_flight[0][0].is_ready()
        return self._completions is not None and self._completions.has_ended()

    def _peek(self) -> None:
        """Estimate the size of an item from the next one, before any chunk was read."""
        items = self._items
        if _is_sliced(items):
            first: Sequence[Any] = items[self._read : self._read + 1]
        else:
            first = self._read_into([], 1)
            self._items = itertools.chain(first, items)  # read, so put back in front
        if first:
            self._measure_items(first)

    def _read_chunk(self, size: int) -> list[Any] | range:
        """The next ``size`` items (fewer at the end).

        A list or range is sliced, at C speed; a range's chunk is a range,
        which a worker process receives in a few bytes whatever its length
        (a list of 25,000 ``int`` costs 0.5 ms to pickle and as much to read
        back). Slicing reads a list where its iterator would: a list grown
        while the map reads it, even after a chunk reached its old end (where
        an iterator stays exhausted), is mapped to its new end, as ``map`` does.
        """
        items = self._items
        if self._bytes_bounded and size > 1 and type(items) is not range:
            return self._read_within_bytes(size)
        if _is_sliced(items):
            return items[self._read : self._read + size]
        return self._read_into([], size)

    def _read_into(self, chunk: list[Any], count: int) -> list[Any]:
        """``chunk``, with up to ``count`` more items of the input, an iterator, appended.

        An error reading them (a generator's, a file's) ends the input there,
        after the items read before it: it is raised once their results are
        handed out (:meth:`chunks`), as ``map()`` gives them before it, and not
        in place of them. An input that failed is read no more.
        """
        if self._input_error is not None:
            return chunk
        try:
            chunk.extend(itertools.islice(self._items, count))  # keeps what it appended if the input raises
        except Exception as error:
            self._input_error = error
            self._exhausted = True
        return chunk

    def _read_within_bytes(self, size: int) -> list[Any]:
        """The next ``size`` items, fewer at the end or where a chunk's share of the byte budget ends.

        ``size`` was bounded by the items sized so far (a ``parallel_map``'s
        first chunks, by its first item alone), so larger items after them are
        looked for before the chunk passes its share (the byte budget over
        ``_max_chunks``). A list's chunk is sized from its middle and last
        items, looked at in place, and sliced once. An iterator's items must be
        read to be sized: they are read in runs that double up to
        ``_SIZED_RUN`` items, the last of each run sized, so its chunk passes
        its share by one run at most, however many cheap small items before
        them grew the chunk.
        """
        items = self._items
        share = DEFAULT_MAX_BYTES_IN_FLIGHT / self._max_chunks
        first = self._read
        if type(items) is list:
            last = min(first + size, len(items)) - 1
            if last > first:
                middle = _estimated_size(items[(first + last) // 2])
                per_item = max(self._bytes_per_item, middle, _estimated_size(items[last]))
                size = max(1, min(size, int(share / per_item)))
            return items[first : first + size]
        chunk = self._read_into([], 1)
        if not chunk or self._input_error is not None:
            return chunk
        # Read here, not through _read_into: a call per run of _SIZED_RUN items cost as much as the items.
        per_item = self._bytes_per_item
        try:
            while len(chunk) < size:
                read = len(chunk)
                chunk.extend(itertools.islice(items, min(read, size - read, _SIZED_RUN)))
                if len(chunk) == read:
                    break
                if len(chunk) * max(per_item, _estimated_size(chunk[-1])) > share:
                    break
        except Exception as error:  # noqa: BLE001  # as _read_into: the input ends there, raised after the items read before it
            self._input_error = error
            self._exhausted = True
        return chunk

    def _item_budget(self) -> int:
        """Items that may be read ahead: ``max_in_flight``, and the byte budget's worth."""
        by_bytes = int(DEFAULT_MAX_BYTES_IN_FLIGHT / self._bytes_per_item)
        return max(self._min_items, min(self._max_items, by_bytes))

    def _measure_items(self, chunk: Sequence[Any]) -> None:
        """Update the bytes per item from a few items of a chunk just read.

        The estimate follows larger items at once and smaller ones slowly, so
        that a run of small items does not open the door to a run of large ones.
        """
        last = len(chunk) - 1
        picks = {0, last // 2, last} if last >= _SIZE_SAMPLES else range(last + 1)
        per_item = sum(_estimated_size(chunk[i]) for i in picks) / len(picks)
        self._bytes_per_item = max(per_item, 0.9 * self._bytes_per_item)

    def _follow(self, handle: AsyncHandle[Any]) -> None:
        if self._completions is None:
            self._completions = Completions(self._remaining(), owned=True)
        self._completions.add(handle)

    def _next_done(self) -> tuple[AsyncHandle[list[Any]], int]:
        """The chunk to hand out next: the oldest (ordered) or the first to end.

        In order, while the oldest runs, the chunks after it that stopped at
        their time budget are taken on as they end (:meth:`_go_on`).
        """
        if self._ordered and self._completions is not None:  # chunks with a time budget are followed
            entry = self._in_flight[0]
            slow_rest = id(entry[0]) in self._slow_rests
            # A queued oldest chunk runs here, as get() would run it: no wake-up to wait for.
            # Not the slow rest of a chunk that stopped, unless no worker takes it (see _slow_rests).
            if self._deadline is None and not slow_rest and entry[0]._run_owned_here_if_queued():
                return entry
            while not entry[0].is_ready():
                if (
                    slow_rest
                    and self._deadline is None
                    and current_task() is None  # (in a task, the wait below runs queued chunks anyway)
                    and self._no_worker_takes(entry[0])
                    and entry[0]._run_owned_here_if_queued()
                ):
                    break
                try:
                    done = self._completions.next()
                except TaskTimeoutError:
                    if not self._completions.timed_out:  # the task the map runs in timed out
                        raise
                    self._time_out()
                if done is not entry[0]:
                    self._go_on(done)
            return entry
        if self._ordered:
            entry = self._in_flight[0]
            remaining = self._remaining()
            if remaining is None:
                if current_task() is not None:  # a queued oldest chunk runs here, cancelled with the task
                    entry[0]._run_owned_here_if_queued()  # (elsewhere its get() in _take runs it)
            elif not entry[0].wait(remaining):
                self._time_out()
            return entry
        assert self._completions is not None
        try:
            done = self._completions.next()
        except TaskTimeoutError:
            if not self._completions.timed_out:  # the task the map runs in timed out
                raise
            self._time_out()
        return next(entry for entry in self._in_flight if entry[0] is done)

    def _no_worker_takes(self, handle: AsyncHandle[list[Any]]) -> bool:
        """Whether ``handle``, the slow rest of a chunk that stopped, queued, waits for a worker that may never come.

        None of the map's chunks runs on a worker, whose end would wake the
        map's wait (and free a worker), and none started it within
        ``_SLOW_REST_GRACE_SECONDS``: every worker is busy with other tasks,
        maybe one that waits for this map to return. A worker woken for it
        but not yet started is given that grace.
        """
        if handle._state != PENDING or self._runs_a_chunk():
            return False
        ends = time.monotonic() + _SLOW_REST_GRACE_SECONDS
        while handle._state == PENDING and time.monotonic() < ends:
            handle.wait(_SLOW_REST_LOOK_SECONDS)  # its start sets off nothing to wait on
        return handle._state == PENDING and not self._runs_a_chunk()

    def _runs_a_chunk(self) -> bool:
        return any(handle._state == RUNNING for handle, _ in self._in_flight)

    def _remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def _time_out_past_deadline(self) -> None:
        """End the map with :meth:`_time_out` if its deadline passed; before a chunk is submitted, and after.

        Before: none starts past it. After: on the ``"sync"`` backend a chunk runs
        as it is submitted, to its end, and the map's waits for it return at
        once; checked only before the next, a chunk that ended past the deadline
        with none after it (the input's last) was handed out as if in time,
        where on the other backends the wait for it ends at the deadline.
        """
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self._time_out()

    def _cut_off(self) -> tuple[int, str]:
        """How many items in flight the timeout cuts off (their chunks had not ended), and those still running.

        Chunks in flight end in any order, and are read in order: where one
        item hangs, the chunks after it have ended, and the map's error said
        all of the items in flight were stopped. The running ones are named
        by their items (which of a chunk's items ran, its worker alone knows).
        """
        count = 0
        ranges = []
        for handle, size in self._in_flight:
            if handle._state >= SUCCEEDED:
                continue
            count += size
            if handle._state == RUNNING:
                start = self._chunk_items[id(handle)][0]  # (every chunk in flight has its entry)
                ranges.append(f"item {start}" if size == 1 else f"items {start}-{start + size - 1}")
        if not ranges:
            return count, ""
        more = f" and {len(ranges) - 3} more chunk(s)" if len(ranges) > 3 else ""
        return count, f" (running: {', '.join(ranges[:3])}{more})"

    def _time_out(self) -> NoReturn:
        """End the map at its deadline; its chunks in flight end timed out.

        Running or still queued, each ends as a task whose own ``timeout=``
        passed (``time_out_all``): counted in ``timed_out_tasks`` and told
        ``"timed out"`` to listeners. They were counted and told cancelled,
        which the user never asked for; the map's clock starts at its call, so
        a chunk that never started timed out with it too. (The map's error
        says its chunks in flight "were cancelled": stopped, in its caller's words.)

        A chunk still running on a worker process has its worker replaced
        at once, as a task's at its own timeout: an item stuck for good (a
        hung read) kept its worker busy after the map had ended, and the next
        map on the pool timed out waiting for it. The replacement is the map's
        own stop (``"stopped"`` in ``worker_restart_reasons``), as for an
        item's error or Ctrl-C, not an incident for ``health()``: two maps
        that met their deadlines made a pool of two workers "degraded".

        Read by ``async for``, the map raises an ``asyncio.TimeoutError`` too,
        on 3.10 as on 3.11+ (``_await.asyncio_timeout``), wherever it met its
        deadline: in its wait for a chunk, or as it submitted one (past the
        loop's body, or a chunk run inline on the ``"sync"`` backend).
        """
        unfinished = self._items_in_flight
        handles = [handle for handle, _ in self._in_flight]
        cut_off = self._cut_off()  # (before they all end timed out)
        time_out_all(handles)  # together: one by one, each running chunk on threads had a thread replace it
        for handle in handles:
            if not handle._code_done:  # its code still runs: on processes, its worker is replaced
                handle._backend._stop_abandoned(handle)
        stop_if_running(handles, TIMED_OUT)  # and again at the grace's end: one sent to a worker may have started since
        left = None if self._total is None else self._total - self._read
        if left == 0 or self._exhausted:
            rest = ""
        elif left is None:
            rest = ", and the rest of the input was not read"
        else:
            rest = f", and the other {left} never started"
        count, running = cut_off
        timed_out = TaskTimeoutError(
            f"the map timed out after {self._timeout:g} s with {self._read - unfinished} item(s) done: "
            f"the {unfinished} in flight timed out with it: {unfinished - count} had ended and lose their "
            f"results, {count} were cut off{running}{rest}"
        )
        if self._read_by_async_for:
            from ._await import asyncio_timeout

            asyncio_timeout(timed_out)
        raise timed_out
