"""A map chunk on a worker process: each item's result journaled, so a crash loses one item and repeats none.

A worker that dies (``os._exit``, a segmentation fault, ``SIGKILL``, the
out-of-memory killer) takes with it whatever its chunk had not sent. So on a
worker process each item's result is written to the worker's crash journal
(shared memory that outlives the worker, ``_backends._crash_journal``) as soon
as the item ends, and the results wait there until the chunk ends and sends
them with its own result message: one message per chunk, as for any task.
Results go earlier only when they must: the journal is full
(``RECORDS`` records, or its data area), or an item raised, or its result
cannot be pickled or does not fit in the journal. When the worker dies, the
parent has the results sent and, from the journal, those of every later item
that ended: the culprit is the next item, found exactly. The journal also says
how many items started, so a worker killed between items (as it sent results,
or stopped at its time budget) blames none, and the items it did not start
run again. No item runs twice, however cheap.

Then the culprit's failure (a ``WorkerCrashedError`` naming its index and
repr) is raised, skipped or replaced by ``None`` as ``on_error`` says, and the
items after it run as a new chunk in the crashed one's place: the map waits
for it as for any chunk, so its timeout and cancellation hold. A result that cannot be pickled
fails its item alone, the same way. Cost: a fraction of a microsecond per item
for the journal.
"""

from __future__ import annotations

import reprlib
import time
import weakref
from collections.abc import Callable, Sequence

from ._coroutines import is_coroutine
from ._notes import add_note
from ._remote_errors import RemoteTraceback, described, unpickling_failure
from ._states import RUNNING

# A worker imports this before its first map chunk (``_chunk_task``): what only errors need
# (the errors' module, with concurrent.futures and logging; the handle's, with typing) is
# imported where an error is made or read; typing.TYPE_CHECKING without importing typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .errors import TaskSerializationError, WorkerCrashedError

__all__ = [
    "SLICE_SECONDS",
    "STOP_ITERATION",
    "TEMPLATE_DIED",
    "UNREPLACED",
    "Failure",
    "TimedResults",
    "after_crash",
    "after_unreadable",
    "describe_item",
    "disown_worker_death",
    "item_failure",
    "item_raised",
    "keep_results_before",
    "past_budget",
    "run_streaming",
    "short_repr",
    "take_results_before",
    "template_died",
]

SLICE_SECONDS = 0.001  # the work between two checks that the chunk was not stopped
_FINISH_UNDER = 2.5  # a chunk past its budget finishes if its items left take under this many times it
#: Why a forked worker died when its template did (``WorkerCrashedError`` messages): no task's fault.
_DIED_WITH_TEMPLATE = (
    "the pool's template process, which forks its workers, died, and every worker forked from it with it"
)
TEMPLATE_DIED = f"{_DIED_WITH_TEMPLATE}; new workers take their place"

# A worker that died as its pool was shutting down, with no task left waiting for a worker: none is started.
UNREPLACED = "the pool is shutting down, so no worker takes its place"


def template_died(replaced: bool) -> str:
    """Why a forked worker died when its template did, and whether workers take their place (``replaced``).

    Not replaced where the pool was shutting down (:data:`UNREPLACED`): the
    template is named all the same, as no task's fault.
    """
    return TEMPLATE_DIED if replaced else f"{_DIED_WITH_TEMPLATE}; the pool is shutting down, so no worker takes their place"

_short_repr = reprlib.Repr()
_short_repr.maxstring = 40
_short_repr.maxother = 40


class Failure:
    """An item that raised, kept in place when ``on_error`` is not ``"raise"``."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class TimedResults(list):  # type: ignore[type-arg]
    """A chunk's results from another executor's worker, with the seconds the chunk ran there (``seconds``).

    The map sizes its chunks from their time (``_map._ChunkSizer``). There the
    executor does not say when a chunk starts, so its time counted from its
    submission: a Dask task's round trip and its wait behind the chunks in
    flight before it, milliseconds, more than the 10 ms a chunk aims at, read
    as its items' work, and an ``imap`` of cheap items ran one item a chunk.
    A list, so that whatever reads a chunk's results reads these alike; it
    pickles as a list subclass does, its items and then ``seconds``.
    """

    __slots__ = ("seconds",)

    def __init__(self, results: list[Any], seconds: float) -> None:
        super().__init__(results)
        self.seconds = seconds


def describe_item(index: int, item: Any) -> str:
    """``item 57 ('row 57')``: how errors name an item of a map."""
    return f"item {index} ({short_repr(item)})"


def short_repr(value: Any) -> str:
    """``value``'s repr cut to about 40 characters, for an error that names it."""
    return _short_repr.repr(value)


# The results of a map chunk's items before the one whose error stopped it (on_error="raise"),
# by the chunk's task, until the map hands them out: kept by the task, not on the error,
# which one exception object raised again may be for two chunks. Gone with the task
# where the map never took them (its consumer left it first).
_stopped_chunks: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def keep_results_before(task: Any, results: list[Any]) -> None:
    """Keep ``results``, those of chunk ``task``'s items before the one whose error stops it, for its map.

    The map hands them out before it raises the error (:func:`take_results_before`):
    an ``imap`` loses no result of an item that ended. ``task`` is the chunk's
    handle; None (a chunk run where the library cannot see it, on another
    executor's process) keeps nothing.
    """
    if results and task is not None:
        _stopped_chunks[task] = results


def take_results_before(task: Any) -> list[Any]:
    """The results :func:`keep_results_before` kept for chunk ``task`` (none if it kept none), forgotten here."""
    return _stopped_chunks.pop(task, [])


# What an item's StopIteration becomes: map() takes it for its own end, and raised out of a map
# it would end the caller's loop or generator early, as a generator's would (PEP 479). Caused by
# it, except in a thread's slice of several items, where map() swallowed it (_chunk_task.run_chunk).
STOP_ITERATION = "the map's function raised StopIteration, which would have ended the map early"


def item_failure(raised: Exception, index: int, item: Any) -> Exception:
    """The error to fail item ``index`` with for ``raised``, its own, readied by :func:`item_raised`.

    ``raised`` itself, or for a ``StopIteration``, a ``RuntimeError`` it caused.
    """
    failure = raised
    if isinstance(raised, StopIteration):
        failure = RuntimeError(STOP_ITERATION)
        failure.__cause__ = raised
    item_raised(failure, index, item)
    return failure


def item_raised(error: BaseException, index: int, item: Any) -> None:
    """Ready ``error``, raised by item ``index`` of a map, to be raised or kept: a note names the item, and it is the item's own."""
    add_note(error, f"makeparallel: raised by {describe_item(index, item)}")
    disown_worker_death(error)


def disown_worker_death(error: BaseException) -> None:
    """Drop the marks of a worker's death, of unreadable results or of a task unpickled in vain, from an error a call of a chunk raised.

    A call that waits for a task of its own whose worker process died raises
    that task's ``WorkerCrashedError``, marked by the backend as a death
    (``_how``, ``_crash``, or ``_lost_elsewhere`` on an executor or Dask;
    they travel with it from a worker process); one
    whose task's results could not be unpickled raises its
    ``TaskSerializationError``, marked so (``_unreadable``, or ``_unsent``
    where some could not be sent); one whose task
    its worker could not unpickle, the error that raised, marked so too
    (``_remote_errors.unpickling_failure``). Left on, they would make the
    chunk's consumer take it for the death of the chunk's own worker, its own
    unreadable results or its own call unpickled in vain, and fail a range of
    items or calls, instead of the call's own error, as itself.
    """
    from .errors import TaskSerializationError, WorkerCrashedError

    unpickling_failure(error)  # a task of the call's own that its worker could not unpickle, not the chunk
    if isinstance(error, WorkerCrashedError):
        vars(error).pop("_how", None)
        vars(error).pop("_crash", None)
        vars(error).pop("_with_template", None)
        vars(error).pop("_unreplaced", None)
        vars(error).pop("_lost_elsewhere", None)
    elif isinstance(error, TaskSerializationError):
        vars(error).pop("_unreadable", None)  # its own task's results, not the chunk's (after_unreadable)
        vars(error).pop("_unsent", None)


def past_budget(elapsed: float, budget: float, done: int, left: int) -> bool:
    """Whether a chunk that ran ``done`` items in ``elapsed`` seconds stops now, ``left`` items short, under ``budget``.

    Past its budget it stops, unless its items left would take under 2.5
    times the budget at its pace so far (50 ms for a ``parallel_map``'s 20 ms:
    the work of one of its later chunks). Stopped, they would run next as such
    chunks, each a round trip, and the items of a list pickled and read again
    on the way: a map of a million cheap items over a list sent about one in
    seven twice. Slow items, whose rest is more, still stop to be spread.
    """
    return elapsed >= budget and elapsed * left > _FINISH_UNDER * budget * done


def run_streaming(
    task: Any, fn: Callable[[Any], Any], items: Sequence[Any], start: int, keep_going: bool, budget: float | None = None
) -> list[Any]:
    """Run a chunk on a worker, journaling each result, and sending results only when they must go.

    ``task`` is the worker's stand-in for the task (``_journal``,
    ``_send_partial``, ``_pickle_error``). The items run in slices of about
    ``SLICE_SECONDS``, between which the task checks whether it was stopped.
    Results wait in the journal until the chunk ends, when they travel in the
    task's own result message (a chunk of up to ``RECORDS`` clean items
    sends one message), unless they must be sent before the next item starts:
    the journal is full, or an item raised or gave a result that cannot be
    pickled or does not fit in the journal (such a result is not in the journal).
    With a ``budget`` (seconds), the chunk stops between slices once it has run
    that long (:func:`past_budget`), leaving its other items to the parent; its
    slices then hold at most as many items as it ran so far, so that a slice
    sized from cheap items does not run the slow ones after them all at once.

    Returns:
        The results not sent yet, as ``JournalWriter.packed`` has them
        travel: the parent unpickles a list.

    Raises:
        TaskSerializationError: an item's result cannot be pickled, with
            ``keep_going`` false.
        Exception: what an item raised, with ``keep_going`` false.
    """
    # Imported here, where it runs (in a worker): the parent's import of makeparallel needs no pickle.
    from ._backends._crash_journal import ResultTooLarge, ResultUnpicklable

    journal = task._journal
    position, length, count = 0, 1, len(items)
    unsent = 0  # the first item whose result was not sent: the journal holds those from here on
    journal.begin(task._id, unsent)
    chunk_began = time.perf_counter()
    while position < count:
        if task._state != RUNNING:
            task._raise_if_stopped()
        if budget is not None and position:
            if past_budget(time.perf_counter() - chunk_began, budget, position, count - position):
                break
        end = min(count, position + length, position + journal.room())
        began = time.perf_counter()
        after: list[Any] = []  # the result of the item after the journaled ones, where it is not in the journal
        journal.ran_up_to(end)
        try:
            journal.extend(fn, items[position:end])
        except ResultTooLarge as too_large:
            after.append(too_large.value)
        except ResultUnpicklable as unpicklable:
            from ._chunk_task import Awaited, awaited_from_here

            value, unpicklable.value = unpicklable.value, None  # not in the context of the error raised below
            if is_coroutine(value) and type(fn) is not Awaited:  # a plain function that returns coroutines
                fn = awaited_from_here(fn, [value], 0)
                position = unsent + journal.done
                journal.ran_up_to(position)  # that item runs again: its coroutine never started
                continue
            from .errors import TaskSerializationError

            failed = unsent + journal.done
            where = describe_item(start + failed, items[failed])
            error = TaskSerializationError(
                f"the result of {where} could not be pickled to send it back from the worker "
                f"process: {unpicklable.problem}. Return picklable data, or use backend='thread'"
            )
            if not keep_going:
                _send_journaled(task, start + unsent, items, unsent)
                raise error from None
            after.append(Failure(error))
        except Exception as raised:
            failed = unsent + journal.done
            failure = item_failure(raised, start + failed, items[failed])
            if not keep_going:
                _send_journaled(task, start + unsent, items, unsent)
                if failure is raised:
                    raise  # its traceback as it was
                raise failure
            after.append(Failure(failure))
        except KeyboardInterrupt:  # lands anywhere, not in an item only
            raise
        except BaseException as error:  # SystemExit, say: it ends the map, whatever on_error says, named too
            failed = unsent + journal.done
            if failed < end:  # raised by an item of the slice, not after them
                item_raised(error, start + failed, items[failed])
                _send_journaled(task, start + unsent, items, unsent)  # handed out before it, as for an Exception
            raise
        end = unsent + journal.done + len(after)
        journal.ran_up_to(end)  # where it stopped: from here, a death is between items until the next slice
        seconds = time.perf_counter() - began
        length = max(1, int(SLICE_SECONDS * (end - position) / max(seconds, 1e-9)))
        position = end
        if budget is not None:  # cheap items then slow ones: no slice of all of them past the budget
            length = min(length, position)
        if not after and (position >= count or journal.room()):
            continue
        _send(task, after, start + unsent, items, unsent, keep_going)
        unsent = position
        journal.begin(task._id, unsent)
    packed: list[Any] = journal.packed([])  # a list once unpickled
    return packed


def _send_journaled(task: Any, first: int, items: Sequence[Any], offset: int) -> None:
    """Send the results journaled before an item that stops the chunk: the parent hands them out before its error."""
    if task._journal.done:
        _send(task, [], first, items, offset, False)


def _send(task: Any, after: list[Any], first: int, items: Sequence[Any], offset: int, keep_going: bool) -> None:
    """Send the results journaled, then ``after``'s, to the parent; an unpicklable one fails its item alone.

    They are those of ``items[offset:]``, item ``first`` of the map the first.
    """
    journal = task._journal
    try:
        task._send_partial(journal.packed(after))
        return
    except Exception:
        pass
    from .errors import TaskError, TaskSerializationError

    checked = []
    for index, result in enumerate(journal.results() + after):
        problem = task._pickle_error(result)
        if problem is not None:
            where = describe_item(first + index, items[offset + index])
            if type(result) is Failure:
                result = Failure(TaskError(f"{where} raised {described(result.error)} ({problem})"))
            else:
                error = TaskSerializationError(
                    f"the result of {where} could not be pickled to send it back from the worker "
                    f"process: {problem}. Return picklable data, or use backend='thread'"
                )
                if not keep_going:
                    raise error
                result = Failure(error)
        checked.append(result)
    task._send_partial(checked)


def after_crash(
    error: WorkerCrashedError, items: Sequence[Any], start: int, keep_going: bool, sent_again: bool = False
) -> tuple[list[Any], int]:
    """The results of a chunk whose worker died, up to and with the culprit's failure; and how many items they are.

    The items after those did not run: the caller runs them as a new chunk,
    which it waits for as for any other (a map's timeout, its cancellation and
    an event loop's other work go on meanwhile), and which is finished the
    same way if its worker dies too. A worker that died between items (its
    journal says that no item had started after those that ended: it was
    sending results, or had stopped at its time budget) leaves no culprit:
    the results are those of the items that ended, and the others run again.
    So does one that died before the chunk's first item (killed from outside
    as it unpickled the items, say, or by an item's unpickling): the caller
    runs the items again, in two halves, so that an item whose unpickling
    ends every worker ends up alone. A chunk of that one item runs again once
    (``sent_again`` says that this is that second run), then the item is the
    culprit.

    A worker whose results cannot all be read back here leaves no item to
    blame alone: every item of the chunk fails with it (one item: it is the
    culprit), none runs again. So does a chunk lost with a worker of an
    executor or a Dask cluster given as the backend (marked ``_lost_elsewhere``
    by the backend), which keeps no journal: its items fail as ``on_error``
    says, as any item's failure does, rather than the whole map whatever it
    says.

    Raises:
        WorkerCrashedError: with ``keep_going`` false, naming the culprit item,
            or the chunk's items when none can be blamed alone.
        WorkerCrashedError: as it came, if ``error`` is not the death of the
            chunk's worker (the process pool failed as a whole, say).
    """
    crash = getattr(error, "_crash", None)
    with_template = getattr(error, "_with_template", False)
    # Not where the pool was shutting down and replaced no worker, template or not: the messages say so.
    replaced = not getattr(error, "_unreplaced", False)
    if crash is None:
        how = getattr(error, "_how", None)
        if how is not None:
            return _lost(error, how, with_template, replaced, items, start, keep_going)
        if getattr(error, "_lost_elsewhere", False):
            return _lost_elsewhere(error, items, start, keep_going)
        raise error
    done, ran, how = crash
    position = len(done)
    if position >= min(ran, len(items)):  # it died after an item's end, before the next one started
        if position == 0 and sent_again and len(items) == 1:  # its unpickling ended two workers
            return _with_culprit(done, how, with_template, replaced, items, start, keep_going)
        return done, position
    return _with_culprit(done, how, with_template, replaced, items, start, keep_going)


def _with_culprit(
    done: list[Any], how: str, with_template: bool, replaced: bool, items: Sequence[Any], start: int, keep_going: bool
) -> tuple[list[Any], int]:
    """``done``, then the failure of the item after them, whose run ended its worker; and how many items they are.

    With ``with_template``, the worker died because its template did: the
    item was running, and fails, but the message does not blame it.
    ``replaced``: whether a worker takes the dead one's place (not as the
    pool shuts down).
    """
    from .errors import WorkerCrashedError

    position = len(done)
    item = describe_item(start + position, items[position])
    if with_template:
        failure = WorkerCrashedError(
            f"{item} of the map was running when its worker process died with {how}: {template_died(replaced)}"
        )
    else:
        failure = WorkerCrashedError(
            f"{item} of the map crashed its worker process ({how}); {_aftermath(replaced)}"
        )
    if not keep_going:
        raise failure
    return [*done, Failure(failure)], position + 1


def _aftermath(replaced: bool) -> str:
    """What came of a dead worker, for its chunk's items: not ``replaced`` where the pool was shutting down."""
    return f"{'a new worker takes its place' if replaced else UNREPLACED}, and the other items were not affected"


def _lost(
    error: WorkerCrashedError,
    how: str,
    with_template: bool,
    replaced: bool,
    items: Sequence[Any],
    start: int,
    keep_going: bool,
) -> tuple[list[Any], int]:
    """The failures of a chunk's items, none of which can be blamed alone for its worker's death; how many they are."""
    from .errors import WorkerCrashedError

    if len(items) == 1:
        return _with_culprit([], how, with_template, replaced, items, start, keep_going)
    aftermath = template_died(replaced) if with_template else _aftermath(replaced)
    lost = WorkerCrashedError(
        f"items {start} to {start + len(items) - 1} of the map were lost with their worker "
        f"process ({how}), which died with a result that could not be read back here, so no "
        f"one of them can be blamed; {aftermath}"
    )
    if not keep_going:
        raise lost from error
    return [Failure(lost)] * len(items), len(items)


def _lost_elsewhere(error: WorkerCrashedError, items: Sequence[Any], start: int, keep_going: bool) -> tuple[list[Any], int]:
    """The failures of a chunk's items lost with a worker of an executor or a Dask cluster; how many they are.

    Such a backend says only that the chunk's task was lost (a broken pool
    ends every task it held, Dask gives up after its allowed failures), not
    which item ran when its worker died: the error names them all, and
    chains the backend's own.
    """
    from .errors import WorkerCrashedError

    if len(items) == 1:
        lost = WorkerCrashedError(f"{describe_item(start, items[0])} of the map was lost with the worker that ran it: {error}")
    else:
        lost = WorkerCrashedError(
            f"items {start} to {start + len(items) - 1} of the map were lost with the worker that ran them "
            f"together, and which of them ended it, if one did, is not known: {error}"
        )
    if not keep_going:
        raise lost from error
    lost.__cause__ = error
    return [Failure(lost)] * len(items), len(items)


class CallUnpickled(Exception):
    """A chunk's function and items could not be unpickled on its worker, so none of its items ran; ``error`` says why."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


def chunk_results(handle: Any) -> list[Any]:
    """``handle.get()``: a chunk's results, or its error.

    Raises:
        CallUnpickled: its worker could not unpickle it (the error a worker
            marks so, ``_remote_errors.mark_unpickling_failure``).
        BaseException: what ``get()`` raised otherwise.
    """
    try:
        results: list[Any] = handle.get()
    except Exception as error:
        if unpickling_failure(error):
            raise CallUnpickled(error) from None
        raise
    return results


def after_unpickled(error: BaseException, item: Any, index: int, keep_going: bool) -> list[Any]:
    """The failure of ``item``, item ``index`` of the map, alone in a chunk its worker could not unpickle, for ``error``.

    Its map's function unpickles there (the map made sure): the item fails
    with the error its own unpickling raised, as if it had raised it, and
    the map goes on as ``on_error`` says.

    Raises:
        BaseException: ``error``, naming the item, with ``keep_going`` false.
    """
    item_raised(error, index, item)
    if not keep_going:
        raise error
    return [Failure(error)]


def after_unreadable(
    error: TaskSerializationError, items: Sequence[Any], start: int, keep_going: bool, task: Any = None
) -> tuple[list[Any], int]:
    """The results of a chunk that ran on a worker, some or all of which could not be read back; and how many items they are.

    A worker that could not send some of the results (a Dask worker, which
    serializes a chunk's results together: one held a lock) sent the others
    (``_unsent``): only the items whose results it could not send fail, as
    on the process backend, whose worker sends a result that cannot be
    pickled as its item's failure. With ``keep_going`` false, the first of
    them raises, and the results before it are kept for chunk ``task``'s map
    to hand out first (:func:`keep_results_before`).

    A result of a class this process cannot import (one from a folder only
    the worker put on ``sys.path``, say) travels with the chunk's others, in
    one pickle that cannot be read back whole: the backend keeps it as it came
    (``_results_as_sent``), and the results are read from it apart, those
    that share an object together (``_serialization.loads_each``). Only the
    items whose results cannot be read so fail, as ``on_error`` says (with ``keep_going`` false, the first of them
    raises, the results before it kept for chunk ``task``'s map to hand out
    first), and the map goes on. None runs again. Where they cannot be read
    one by one (no list, a count that differs), every item of the chunk that
    ran fails with it. So do they where an item's error itself could not be
    read (``_unreadable`` then says what it was): the failure names it, the
    worker's traceback below it (whose note names the item). A chunk stopped at its time budget ran fewer than its
    items: the backend counts its results without unpickling them
    (``_unreadable``), and the caller runs the items after those, as for any
    such chunk. Where that count is not known, every item of the chunk fails.

    Raises:
        TaskSerializationError: with ``keep_going`` false, naming the item, or
            the chunk's items.
        TaskSerializationError: ``error`` as it came, if it is not such a failure.
    """
    from .errors import TaskSerializationError

    unsent = getattr(error, "_unsent", None)
    if unsent is not None:
        return _without_unsent(unsent, items, start, keep_going, task)
    unreadable = getattr(error, "_unreadable", None)
    if unreadable is None:
        raise error
    cause, sent, raised = unreadable
    ran = sent if sent is not None and 0 < sent <= len(items) else len(items)
    results = _each_read(error, ran)
    if results is not None:
        return _without_unreadable(results, items, start, keep_going, task)
    problem = described(cause)
    if raised:  # an item's error, itself: what it was, and the worker's traceback (its note names the item)
        lost = _item_error_unread(raised, problem, items, start, ran)
        lost.__cause__ = error.__cause__  # the worker's traceback, a RemoteTraceback (_process._settle)
        if not keep_going:
            raise lost
        return [Failure(lost)] * ran, ran
    if ran == 1:
        lost = TaskSerializationError(
            f"{describe_item(start, items[0])} of the map ran on a worker process, but its result (or its "
            f"error) could not be unpickled here: {problem}. Return data this process can import too"
        )
    else:
        items_named = f"items {start} to {start + ran - 1} of the map"
        what = (
            f"{items_named} ran on a worker process, and their results came back together, but one of them "
            "(or an item's error)"
            if ran == sent  # else only that they were sent: an item that raised stopped the chunk
            else f"{items_named} went to a worker process together, and a result or an error of theirs"
        )
        lost = TaskSerializationError(
            f"{what} could not be unpickled here: {problem}. Return data this process can import too; "
            "with chunksize=1 only the item whose result cannot be fails"
        )
    if not keep_going:
        raise lost from cause
    lost.__cause__ = cause
    return [Failure(lost)] * ran, ran


def _item_error_unread(raised: str, problem: str, items: Sequence[Any], start: int, ran: int) -> TaskSerializationError:
    """The failure of the ``ran`` items of a chunk one of which raised ``raised`` (``Type: message``), which could not be unpickled here for ``problem``."""
    from .errors import TaskSerializationError

    if ran == 1:
        which = f"{describe_item(start, items[0])} of the map"
    else:  # the worker's traceback, below, names the item in a note
        which = f"an item of items {start} to {start + ran - 1} of the map, which went to a worker process together,"
    return TaskSerializationError(
        f"{which} raised an exception in its worker process ({raised}) that could not be unpickled here: "
        f"{problem}. Raise exceptions this process can import too (classes of a module both import), holding data it can"
    )


def _each_read(error: TaskSerializationError, ran: int) -> list[Any] | None:
    """The ``ran`` results of a chunk that could not be unpickled whole, each read alone (``Unreadable`` where it cannot be); ``None`` if they cannot be."""
    sent = getattr(error, "_results_as_sent", None)
    if sent is None:
        return None
    from ._serialization import Unreadable, loads_each

    done, pieces, last = sent
    results: list[Any] = []
    read = 0  # the results of done taken so far
    for before, data, buffers in [*pieces, (len(done), *last)] if type(last) is tuple else pieces:
        results += done[read:before]
        read = before
        each = loads_each(data, buffers)
        if each is None:
            return None
        results += each
    results += done[read:]
    if type(last) is list:
        results += last
    if len(results) != ran or not any(type(result) is Unreadable for result in results):
        return None  # not as counted, or read whole after all: the chunk fails whole, as it came
    return results


def _without_unreadable(
    results: list[Any], items: Sequence[Any], start: int, keep_going: bool, task: Any
) -> tuple[list[Any], int]:
    """A chunk's ``results``, each that could not be unpickled here (an ``Unreadable``) failed in its place; and how many.

    Raises:
        TaskSerializationError: with ``keep_going`` false, naming the first
            item whose result could not be unpickled, its error as the cause.
    """
    from ._serialization import Unreadable
    from .errors import TaskSerializationError

    for index, result in enumerate(results):
        if type(result) is not Unreadable:
            continue
        cause = result.error
        failure = TaskSerializationError(
            f"{describe_item(start + index, items[index])} of the map ran on a worker process, but its result (or its "
            f"error) could not be unpickled here: {described(cause)}. Return data this process can import too"
        )
        if not keep_going:
            keep_results_before(task, results[:index])
            raise failure from cause
        failure.__cause__ = cause
        results[index] = Failure(failure)
    return results, len(results)


def _without_unsent(
    unsent: tuple[list[Any], list[tuple[int, str, str]], str],
    items: Sequence[Any],
    start: int,
    keep_going: bool,
    task: Any,
) -> tuple[list[Any], int]:
    """A chunk's results as its worker sent them, each it could not send failed in its place; and how many.

    ``unsent`` is the results (fewer than ``items`` where the chunk stopped at
    its time budget), ``(index, "Type: message", the worker's traceback or
    "")`` for each that could not be sent, and where they ran (``"its Dask
    worker"``).

    Raises:
        TaskSerializationError: with ``keep_going`` false, naming the first
            item whose result could not be sent, the worker's traceback chained.
    """
    from .errors import TaskSerializationError

    results, failed, place = unsent
    results = list(results)  # the error's own stays as it came
    for index, problem, worker_traceback in failed:
        where = describe_item(start + index, items[index])
        failure = TaskSerializationError(
            f"the result of {where} could not be pickled to send it back from {place}: {problem}. "
            "Return picklable data, or use backend='thread'"
        )
        if worker_traceback:  # the first's only
            failure.__cause__ = RemoteTraceback(worker_traceback)
        if not keep_going:
            keep_results_before(task, results[:index])
            raise failure
        results[index] = Failure(failure)
    return results, len(results)
