"""A map chunk on a worker process: results streamed as slices end, and a crash that loses one item.

A worker that dies (``os._exit``, a segmentation fault, the out-of-memory
killer) takes with it whatever its chunk had not sent. So on a worker process a
chunk runs in slices of about a millisecond of work and sends each slice's
results as soon as the slice ends, saying how many items the next slice will
hold. When the worker dies, the parent has the results of every finished
slice, and knows that the culprit is among the items of the next slice:

* a slice of one item (the first slice, and every slice of items that take a
  millisecond or more) names the culprit exactly: nothing runs again;
* a longer slice (cheap items) is run again one item at a time, each result
  sent as it ends, to find the culprit. The items before the culprit in that
  slice, about a millisecond of work, run a second time.

Then the items after the culprit run as a new chunk, and the culprit's failure
(a ``WorkerCrashedError`` naming its index and repr) is raised, skipped or
replaced by ``None`` as ``on_error`` says. A result that cannot be pickled
fails its item alone, the same way. Cost: one message per slice, about one per
millisecond of work.
"""

from __future__ import annotations

import reprlib
import time
from collections.abc import Callable
from typing import Any

from ._handle import _add_note
from ._states import RUNNING
from .errors import TaskError, TaskSerializationError, WorkerCrashedError

__all__ = ["Failure", "describe_item", "finish_after_crash", "run_streaming"]

_SLICE_SECONDS = 0.001  # the work between two messages of a streamed chunk

_short_repr = reprlib.Repr()
_short_repr.maxstring = 40
_short_repr.maxother = 40


class Failure:
    """An item that raised, kept in place when ``on_error`` is not ``"raise"``."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def describe_item(index: int, item: Any) -> str:
    """``item 57 ('row 57')``: how errors name an item of a map."""
    return f"item {index} ({_short_repr.repr(item)})"


def run_streaming(
    task: Any, fn: Callable[[Any], Any], items: list[Any], start: int, keep_going: bool, one_by_one: bool
) -> list[Any]:
    """Run a chunk on a worker, sending each slice's results as it ends; return ``[]``.

    ``task`` is the worker's stand-in for the task (``_send_partial``,
    ``_pickle_error``). ``one_by_one`` makes every slice one item long.
    """
    position, length, count = 0, 1, len(items)
    while position < count:
        if task._state != RUNNING:
            task._raise_if_stopped()
        end = min(count, position + length)
        results: list[Any] = []
        began = time.perf_counter()
        try:
            results.extend(map(fn, items[position:end]))
        except Exception as error:
            failed = position + len(results)
            _add_note(error, f"makeparallel: raised by {describe_item(start + failed, items[failed])}")
            if not keep_going:
                raise
            results.append(Failure(error))
            end = failed + 1
        seconds = time.perf_counter() - began
        first, position = position, end
        if not one_by_one:
            length = max(1, int(_SLICE_SECONDS * (end - first) / max(seconds, 1e-9)))
        _send(task, results, start + first, items[first:end], min(length, count - position), keep_going)
    return []


def _send(task: Any, results: list[Any], first: int, items: list[Any], next_length: int, keep_going: bool) -> None:
    """Send finished results to the parent; an unpicklable one fails its item alone."""
    try:
        task._send_partial(results, next_length)
        return
    except Exception:
        pass
    checked = []
    for offset, result in enumerate(results):
        problem = task._pickle_error(result)
        if problem is not None:
            where = describe_item(first + offset, items[offset])
            if type(result) is Failure:
                kind = type(result.error).__qualname__
                result = Failure(TaskError(f"{where} raised {kind}: {result.error} ({problem})"))
            else:
                error = TaskSerializationError(
                    f"the result of {where} could not be pickled to send it back from the worker "
                    f"process: {problem}. Return picklable data, or use backend='thread'"
                )
                if not keep_going:
                    raise error
                result = Failure(error)
        checked.append(result)
    task._send_partial(checked, next_length)


def finish_after_crash(
    error: WorkerCrashedError,
    items: list[Any],
    start: int,
    keep_going: bool,
    run: Callable[[list[Any], int, bool], Any],
) -> list[Any]:
    """The results of a chunk whose worker died: the finished ones, the culprit's failure, the rest.

    ``run(items, start, one_by_one)`` submits a new chunk and returns its handle.

    Raises:
        WorkerCrashedError: with ``keep_going`` false, naming the culprit item.
        WorkerCrashedError: as it came, if ``error`` is not from a streamed chunk.
    """
    crash = getattr(error, "_crash", None)
    if crash is None:
        raise error
    done, window, how = crash
    results = list(done)
    position = len(done)
    while position < len(items):
        if window == 1:  # the culprit is the item the worker was running
            failure = WorkerCrashedError(
                f"{describe_item(start + position, items[position])} of the map crashed its worker "
                f"process ({how}); the pool started a new worker, and the other items were not affected"
            )
            if not keep_going:
                raise failure
            results.append(Failure(failure))
            position += 1
            window = 0
            continue
        one_by_one = window > 1
        rest = items[position : position + window] if one_by_one else items[position:]
        handle = run(rest, start + position, one_by_one)
        try:
            results.extend(handle.get())
            position += len(rest)
            window = 0
        except WorkerCrashedError as again:
            crash = getattr(again, "_crash", None)
            if crash is None:
                raise
            done, window, how = crash
            results.extend(done)
            position += len(done)
            if one_by_one:
                window = 1
        except BaseException:
            handle.cancel()
            raise
    return results
