"""The task that runs one chunk of a map, on a thread or on a worker process.

A map sends its chunks as calls of :func:`run_chunk`, which a worker process
unpickles by reference: it imports this module before its first chunk runs.
So it imports only what running a chunk needs. The map's own module (with the
collectors, the decorators and ``typing``, and the errors' module with
``concurrent.futures`` and ``logging``) took a fresh worker about 10 ms to
import before its first chunk, 30 ms on a busy machine: a first map on a cold
pool paid it in every worker, and a pool with ``max_tasks_per_child=1`` for
every chunk, where the map's chunk sizer read it as the items' own time and
kept the chunks at one item (an ``imap`` of 300 no-ops took 5 s).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ._coroutines import is_coroutine, run_to_end
from ._process_chunks import (
    SLICE_SECONDS,
    STOP_ITERATION,
    Failure,
    TimedResults,
    item_failure,
    item_raised,
    keep_results_before,
    past_budget,
    run_streaming,
)
from ._states import RUNNING
from ._task_context import current_task

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first chunk.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Awaited", "awaited_from_here", "run_chunk"]

_CANCEL_CHECK_EVERY = 256  # items between cancellation checks, at most


class Awaited:
    """An ``async def`` function mapped: each item's coroutine runs to its end where the chunk runs.

    As a ``@parallel`` call of it would (on the worker's own event loop, cancelled
    with its task); calling it only would give a coroutine whose body never ran.
    """

    __slots__ = ("__wrapped__",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.__wrapped__ = fn  # errors name the function, not this (``_process._kind``)

    def __call__(self, *args: Any) -> Any:
        value = self.__wrapped__(*args)
        return run_to_end(value, current_task()) if is_coroutine(value) else value

    def __reduce__(self) -> tuple[type[Awaited], tuple[Callable[..., Any]]]:
        return Awaited, (self.__wrapped__,)


def run_chunk(
    fn: Callable[[Any], Any], items: Sequence[Any], start: int, keep_going: bool, budget: float | None = None
) -> list[Any]:
    """Map ``fn`` over one chunk, inside a task.

    Items run in slices through ``list.extend(map(...))``, the fastest loop Python
    has. When ``fn`` raises, ``extend`` keeps the results it had appended (CPython
    3.10 to 3.13 alike), so ``len(results)`` is the failing item's position.
    Between slices the task checks whether it was cancelled or timed out. On a
    worker process each result is journaled and the slices' results are
    streamed to the parent instead (:func:`run_streaming`).

    With a ``budget`` (seconds), the chunk stops between slices once it has run
    that long (:func:`past_budget`), and returns the results of the items it
    ran: fewer than ``items``. Its slices then start at one item and are sized
    to about ``SLICE_SECONDS`` each from the time so far, but hold at most as
    many items as the chunk ran: slow items overrun the budget by about one
    item, and slow items after cheap ones by about the work done so far, not
    by a slice sized from the cheap ones.
    """
    task = current_task()
    # A task on a thread is a handle; one on a worker process streams its results.
    if hasattr(task, "_send_partial"):
        return run_streaming(task, fn, items, start, keep_going, budget)
    if task is None:  # on another executor's worker (``call_remotely``): the time it ran goes back with the results
        began = time.perf_counter()
        results = _run_here(fn, items, start, keep_going, budget, None)
        return TimedResults(results, time.perf_counter() - began)
    return _run_here(fn, items, start, keep_going, budget, task)


def _run_here(
    fn: Callable[[Any], Any], items: Sequence[Any], start: int, keep_going: bool, budget: float | None, task: Any
) -> list[Any]:
    """:func:`run_chunk` on this thread, as the task ``task`` (``None`` on another executor's worker)."""
    count = len(items)
    if count == 1:  # a map of one item: no slices
        if task is not None and task._state != RUNNING:
            task._raise_if_stopped()
        try:
            value = fn(items[0])
            if is_coroutine(value):  # a plain function that returns a coroutine: it runs, as a call's does
                value = run_to_end(value, task)
            return [value]
        except Exception as raised:
            error = item_failure(raised, start, items[0])
            if not keep_going:
                if error is raised:
                    raise  # its traceback as it was
                raise error
            return [_failure(error, task)]
        except KeyboardInterrupt:  # Ctrl-C lands anywhere, not in an item only
            raise
        except BaseException as error:  # SystemExit, say: it ends the map, whatever on_error says, named too
            item_raised(error, start, items[0])
            raise
    results: list[Any] = []
    step = max(1, min(_CANCEL_CHECK_EVERY, count // 16)) if budget is None else 1
    began = time.perf_counter()
    position = 0
    while position < count:
        if task is not None and task._state != RUNNING:
            task._raise_if_stopped()
        if budget is not None and position:
            elapsed = time.perf_counter() - began
            if past_budget(elapsed, budget, position, count - position):
                break
            step = max(1, min(_CANCEL_CHECK_EVERY, position, int(SLICE_SECONDS * position / max(elapsed, 1e-9))))
        try:
            results.extend(map(fn, items[position : position + step]))
            if len(results) < min(count, position + step):  # map() ended early: an item raised StopIteration
                raise RuntimeError(STOP_ITERATION)
        except Exception as error:
            if not keep_going and _returned_coroutines(fn, results, position):
                fn = awaited_from_here(fn, results, position)  # those before the error run: they are handed out
                continue
            item_raised(error, start + len(results), items[len(results)])
            if not keep_going:
                keep_results_before(task, results)
                raise
            results.append(_failure(error, task))
        except KeyboardInterrupt:  # Ctrl-C lands anywhere, not in an item only
            raise
        except BaseException as error:  # SystemExit, say: it ends the map, whatever on_error says, named too
            if _returned_coroutines(fn, results, position):
                fn = awaited_from_here(fn, results, position)
                continue
            if len(results) < min(count, position + step):  # raised by an item of the slice, not after them
                item_raised(error, start + len(results), items[len(results)])
                keep_results_before(task, results)  # handed out before it, as for an Exception
            raise
        if _returned_coroutines(fn, results, position):
            fn = awaited_from_here(fn, results, position)
            continue
        position = len(results)
    return results


def _failure(error: BaseException, task: Any) -> Failure:
    """An item's error, kept in its place in the chunk's results.

    A chunk with no task runs on another executor's worker (``call_remotely``),
    which pickles its results as it pickles any: an error pickle cannot send
    there (an attribute holding a lock) failed the whole chunk, so the whole
    map, whatever ``on_error`` said. It travels in a ``CarriedError`` instead.
    """
    if task is None:
        from ._backends._adapter import carried_if_unpicklable  # on this failure path only

        carried = carried_if_unpicklable(error)
        if carried is not None:
            return Failure(carried)
    return Failure(error)


def _returned_coroutines(fn: Callable[[Any], Any], results: list[Any], position: int) -> bool:
    """Whether plain ``fn`` gave a coroutine for the first item of the slice from ``position``.

    Looked at before an item's error too: the results before it are handed
    out with the error, and were coroutines whose body never ran.
    """
    return len(results) > position and is_coroutine(results[position]) and type(fn) is not Awaited


def awaited_from_here(fn: Callable[[Any], Any], results: list[Any], position: int) -> Awaited:
    """``fn``, a plain function found to return coroutines (a lambda around an ``async def``, say), made to run them.

    Its results from ``position`` on are dropped, their coroutines closed
    unstarted: the slice runs again, each item's coroutine to its end, as a
    ``@parallel`` call of ``fn`` runs it. Only its call, which made the
    coroutine, runs twice. One result a slice is looked at, not each.
    """
    for value in results[position:]:
        if is_coroutine(value):
            value.close()
    del results[position:]
    return Awaited(fn)
