"""A map's chunk that could not be pickled for a worker process: what in it is at fault.

``parallel_map`` (``_map._unsendable_item``) and ``Executor.map``
(``_executor._unsendable_call``) send a chunk of items, or of calls, as one
task. When its pickling fails, each names the culprit in its own words from
what is found here: the map's function, which a chunk pickles first; the
first item that cannot be pickled with those before it, where each alone
can be; whether the chunk nests too deep. One search for both: written
twice, the two drifted apart, and ``Executor.map`` advised making the
arguments' pickling repeatable for a chunk that only nested too deep.

Everything here runs only once a chunk failed to pickle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .errors import TaskSerializationError

__all__ = ["TOO_DEEP", "caused", "first_unsendable_together", "refuse_unsendable_function", "too_deep"]

# Said of a chunk whose pickling reached the recursion limit though each item alone did not: sending
# each alone (chunksize=1) wraps it as deep, and fails alike.
TOO_DEEP = (
    "A task's call wraps its items in a few more levels, pickled further down the stack: an item nested "
    "nearly as deep as Python's recursion limit pickles alone but not there. Nest the items less deeply, "
    "raise the limit (sys.setrecursionlimit), or use backend='thread', which needs no pickling"
)


def too_deep(problem: BaseException | None) -> bool:
    """Whether ``problem`` (or what caused it) is a ``RecursionError``: pickling went too deep.

    cloudpickle raises a ``PicklingError`` caused by it; the plain pickler raises it as it is.
    """
    seen = 0
    while problem is not None and seen < 8:
        if isinstance(problem, RecursionError):
            return True
        problem, seen = problem.__cause__, seen + 1
    return False


def caused(message: str, cause: TaskSerializationError) -> TaskSerializationError:
    """A ``TaskSerializationError`` saying ``message``, with ``cause`` (the submission's) as its cause."""
    failure = TaskSerializationError(message)
    failure.__cause__ = cause
    return failure


def refuse_unsendable_function(fn: Callable[..., Any], named: str, error: TaskSerializationError) -> None:
    """Raise a ``TaskSerializationError`` saying ``named`` (the map's function) cannot be pickled, where it cannot.

    Tried before a chunk's items: a chunk task pickles its function first, so
    then every chunk would fail, whatever its items. ``error`` (the chunk's) is
    kept as the cause.
    """
    from . import _serialization

    try:
        _serialization.dumps(fn)
    except Exception as problem:
        raise TaskSerializationError(
            f"{named} cannot be sent to a worker process: {type(problem).__name__}: {problem}. It must be "
            "picklable, and so must what it holds (a bound method's object, a closure's values); "
            "backend='thread' needs no pickling"
        ) from error


def first_unsendable_together(fn: Callable[..., Any], items: Sequence[Any]) -> tuple[int, Exception] | None:
    """The offset in ``items`` of the first that cannot be pickled with ``fn`` and the items before it, and why.

    For a chunk each item of which pickles alone (a recursion limit reached
    by the chunk as a whole, an object whose pickling fails once it was seen
    in the same pickle). Found by halving: the first ``k`` pickle together,
    the first ``k + 1`` do not. ``None`` where the whole chunk pickles now:
    its failure did not repeat, or the task sent wrapped it deeper than this
    test does (:func:`too_deep` of the submission's error tells).
    """
    low, high = 0, len(items)  # the first `low` pickle together (none do, trivially); the first `high` do not
    failed = _pickling_problem(fn, items, high)
    if failed is None:
        return None
    while high - low > 1:
        middle = (low + high) // 2
        found = _pickling_problem(fn, items, middle)
        if found is None:
            low = middle
        else:
            high, failed = middle, found
    return low, failed


def _pickling_problem(fn: Callable[..., Any], items: Sequence[Any], count: int) -> Exception | None:
    """What pickling ``fn`` with the first ``count`` of ``items``, as a chunk's task does, raises; ``None`` if nothing."""
    from . import _serialization

    try:
        _serialization.dumps((fn, list(items[:count])))
    except Exception as problem:  # noqa: BLE001  # pickling runs the items' own code: whatever it raises, they fail
        return problem
    return None
