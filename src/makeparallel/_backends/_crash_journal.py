"""A worker's crash journal: the results of a map chunk's items, kept where the worker's death cannot reach them.

A worker that dies (``os._exit``, a segmentation fault, ``SIGKILL``, the
out-of-memory killer) takes its memory with it, and with it the results of the
items it finished since it last sent some. So after each item of a map chunk
the worker writes the item's result to this journal: one shared-memory file
per worker, made by the parent, without a name (``memfd_create``, or an
unlinked temporary file where that does not exist), mapped by both processes.
The pages outlive the worker; after a crash the parent reads the items the
worker finished and had not sent, and knows that the culprit is the next one,
if it had started.

Layout: a header of 64-bit slots (the task's id, and the index in its chunk
of the first item journaled; then the id of the last task the worker started,
any task: a worker found dead with a task sent to it that it never started,
killed while idle say, had that task put back in the queue rather than failed;
then the journal's marker; then how many cancels the parent sent, so that a
worker holding tasks sent ahead reads its pipe before the next one starts only
when a cancel waits there; then how many of the chunk's items started, so that
a worker killed between items, as it sent results or stopped at its time
budget, blames none of them; then the task a ``SIGTERM`` the parent sends is
for, with how many it sent and the last of them the worker declined, so that
a worker whose task ended as the parent decided to stop it does not die of it
in the task after), a byte per item (its kind), a 64-bit record
per item, then a data area. Records not written yet hold the marker, a random
negative number drawn when the worker starts. An ``int`` that fits in 64 bits
is its record (a map of cheap items mostly returns numbers, and a single
store is the cheapest durable write there is); a ``float`` is its record's
bits, its kind byte saying so; ``None`` and a ``bool`` are their kind byte
(a bool's record is 0 or 1); any other result is serialized into the data
area, and its record is where its bytes end: ``marshal`` (version 2, no
references) for the exact scalar types it writes faithfully and a tuple of
them that pickle would read back the same (not a bytearray, which it would
write as bytes; no string twice), else a pickle
that carries exceptions as result messages do (cause chain, custom
``__init__``: ``_remote_errors``). A
record is written last, and the records used are reset to the marker once
their results were sent, so a record counts only once it is whole: a
worker killed in the middle of writing one leaves the journal as it was
before it. One case cannot be told apart: an ``int`` result equal to the
marker (or a ``float`` with its bits) reads as not written; with a random
64-bit marker that is a chance of one in 2**64 for a result itself random,
and none for the counts, sizes and indexes maps mostly return, which are
small. The reader then stops one item early, and blames the last item that
ended instead of the one after it.

Cost per item, on the worker: one slot write for an ``int``, two for a
``float``, ``None`` or a ``bool``, a serialization and a copy for anything
else (about 0.05, 0.1 and 0.3 microseconds over a plain loop on the machine
the benchmarks ran on);
nothing in the parent, which reads the journal only after a crash. Nothing to
clean up: the file has no name, and the kernel frees it when the last of the
two processes closes it.

The records also serve the chunk's result message: results that are all
``int`` or all ``float`` travel as a copy of their records, which is cheaper to
make and to read back than a pickled list (:meth:`JournalWriter.packed`).
"""

from __future__ import annotations

import io
import marshal
import mmap
import os
import sys
import time
import _pickle
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from types import FunctionType

from .._remote_errors import ExceptionsPickled, described, reduce_exception
from ._fd_numbers import standard_numbers_held

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Literal

    Typecode = Literal["q", "d"]  # a record read as an int, or as a float

__all__ = [
    "JOURNAL_BYTES",
    "RECORDS",
    "JournalReader",
    "JournalWriter",
    "ResultTooLarge",
    "ResultUnpicklable",
    "create_journal",
    "records_to_list",
]

#: Bytes of a journal: results that fill it are sent before the next item runs.
JOURNAL_BYTES = 1 << 20
#: Results a journal holds: a kind byte and a record for each (144 KiB in all).
RECORDS = 16 * 1024
_STARTED = 2  # slot of the id of the last task the worker started, map chunk or not; 0, 1: task id, first item's index
_MARKER = 3  # slot of the marker: what a record holds until it is written
_CANCELS = 4  # slot of the count of cancels the parent sent the worker
_RAN = 5  # slot of how many of the chunk's items started: a death with fewer results journaled is the next one's
# The slots of a kill (JournalWriter.declines). Each is written by one side only: a slot both
# wrote (the worker's "declined", the parent's "called off") could take the parent's write
# over the worker's, read a moment before, and excuse someone else's SIGTERM later.
_STOP_FOR = 6  # the parent's: the task its last SIGTERM stops (0: whatever runs); its negative once the kill is called off
_KILLS = 7  # the parent's: how many kills it made, this one included (each a SIGTERM: its own, or one on its way)
_DECLINED = 8  # the worker's: the kill (its number in _KILLS) whose SIGTERM it declined last
_KINDS = 8 * 9  # byte offset of the kind bytes
# Seconds after which a SIGTERM sent and neither declined nor obeyed is taken as gone: a task's own
# handler had it (the parent sends the next kill's then, rather than rely on the SIGKILL).
_ON_ITS_WAY = 5.0
_RECORDS = (_KINDS + RECORDS) // 8  # slot of the first record
_DATA = 8 * (_RECORDS + RECORDS)  # byte offset of the data area
# Record kinds; 0 is an ``int`` (or no record, while the record holds the marker).
_INT, _FLOAT, _DATA_ENTRY, _NONE, _BOOL = 0, 1, 2, 3, 4
# Exact types ``marshal`` writes and reads back as they were (it writes any other
# object with the buffer protocol, a NumPy array included, as bytes: not those).
_MARSHALLED = frozenset({int, float, complex, str, bytes, bool, type(None)})
# Those of them that pickle writes anew each time they occur, as marshal's version 2 does.
_UNSHARED = frozenset({int, float, bool, type(None)})
_PICKLE = 0x80  # the first byte of every pickle of protocol 2 or more
_PACK_AT_LEAST = 64  # results a chunk sends as a copy of their records, at least
_ALL_INTS: Any = object()  # what JournalWriter._extend_with_ints returns when every result was an int


class ResultTooLarge(Exception):
    """The journal has no room for ``value``, the last item's result: its slice sends it now."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ResultUnpicklable(Exception):
    """An item's result, ``value``, cannot be pickled, for the reason in ``problem``."""

    def __init__(self, value: Any, problem: str) -> None:
        super().__init__(problem)  # not value in args: an error raised from here must still pickle
        self.value = value
        self.problem = problem


def create_journal() -> int:
    """A new journal file with no name, ``JOURNAL_BYTES`` long and zeroed; return its descriptor (3 or more).

    Its pages are allocated as they are first written.
    """
    if hasattr(os, "memfd_create"):
        with standard_numbers_held():
            fd = os.memfd_create("makeparallel-journal", os.MFD_CLOEXEC)
    else:  # pragma: no cover - macOS: an unlinked file, in memory where the system has a tmpfs
        import tempfile

        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with standard_numbers_held(), tempfile.TemporaryFile(dir=shm) as file:
            fd = os.dup(file.fileno())
    try:
        os.ftruncate(fd, JOURNAL_BYTES)
    except BaseException:
        os.close(fd)
        raise
    return fd


class JournalWriter:
    """The worker's side: runs a chunk's items, journaling each result as it ends, until they are sent."""

    __slots__ = ("_blank", "_floats", "_kinds", "_listed", "_map", "_marker", "_numbers", "_pickler", "_slots", "_used")

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, JOURNAL_BYTES)
        self._slots = memoryview(self._map).cast("q")
        self._floats = memoryview(self._map).cast("d")  # the same slots, read as floats
        self._kinds = memoryview(self._map).cast("B")
        self._marker = -1 - int.from_bytes(os.urandom(8), "little") % (1 << 63)
        self._blank = memoryview(self._marker.to_bytes(8, "little", signed=True) * RECORDS)
        self._map[8 * _RECORDS : _DATA] = self._blank  # before the marker: nothing reads as a record
        self._slots[_MARKER] = self._marker
        self._used = 0  # records written since the last begin()
        # Their results, once one is no int, as they were; None while each is only its record.
        self._listed: list[Any] | None = None
        self._pickler = _JournalPickler()
        # Each record's slot number, made once (at the first map chunk: 0.6 MB): counting made an int per item.
        self._numbers: list[int] = []

    def started(self, task_id: int) -> None:
        """The worker starts task ``task_id`` (a map chunk or not): from now on, its death is that task's."""
        self._slots[_STARTED] = task_id

    def cancels_sent(self) -> int:
        """How many cancels the parent has sent this worker: when the count moves, one waits on the pipe."""
        return self._slots[_CANCELS]

    def declines(self, running: int | None, ended: Container[int]) -> bool:
        """Whether this worker declines the ``SIGTERM`` it got, running task ``running`` (None: none); say so if it does.

        It does if the parent's last kill was for a task other than
        ``running`` that is one of ``ended`` (the tasks that ended here), or
        was called off since (the task ended, or another started, before this
        handler ran): sent as that task ended, the signal would end the task
        after it. The parent sends no task to a worker it is killing, and calls
        the kill off as it sees the task end, so ``ended`` holds the target
        however many tasks ended since; called off, the target is declined
        whenever its signal comes. Said here, the parent calls off the
        ``SIGKILL`` a second later too.

        A kill excuses one ``SIGTERM``: any other (for the task that runs, for
        one not started, a second one, or with no kill at all: someone
        else's) ends the worker. The one exception cannot be told apart: a
        ``SIGTERM`` that comes while the parent's is still on its way, or after
        a task's own handler took the parent's, takes that kill's excuse.
        """
        kill = self._slots[_KILLS]
        if self._slots[_DECLINED] == kill:  # its signal declined already, or no kill was ever signalled
            return False
        target = self._slots[_STOP_FOR]
        if target < 0 or (target > 0 and target != running and target in ended):
            self._slots[_DECLINED] = kill
            return True
        return False

    def begin(self, task_id: int, first: int) -> None:
        """Journal task ``task_id``'s chunk's items from index ``first`` on, from an empty journal.

        The records before were sent to the parent (or are of another chunk),
        so they are reset first: a worker killed in between leaves no record
        under the wrong index.
        """
        used, journal = self._used, self._map
        if used:
            journal[8 * _RECORDS : 8 * (_RECORDS + used)] = self._blank[: 8 * used]
            journal[_KINDS : _KINDS + used] = bytes(used)
            self._used = 0
        self._listed = None
        self._slots[_RAN] = first  # before the task's id: none of its items runs yet
        self._slots[1] = first
        self._slots[0] = task_id
        journal.seek(_DATA)

    def ran_up_to(self, end: int) -> None:
        """Say that the chunk's items before ``end`` (an index in the chunk, as :meth:`begin`'s ``first``) started.

        Written before a slice of items runs (the slice's end) and after it
        (where it stopped). A worker found dead with fewer results journaled
        than that died in the next item, its culprit; with as many, it died
        between items (sending results, or stopped at its time budget), and
        no item is to blame: those not started run again.
        """
        self._slots[_RAN] = end

    @property
    def done(self) -> int:
        """How many results were journaled since :meth:`begin`: the items :meth:`extend` ran and journaled."""
        return self._used

    def results(self) -> list[Any]:
        """The results journaled since :meth:`begin`, in order, each as it was; the list kept, if any: not to be changed."""
        if self._listed is not None:
            return self._listed
        return self._slots[_RECORDS : _RECORDS + self._used].tolist()  # each an int, its record

    def packed(self, after: list[Any]) -> Any:
        """The results journaled since :meth:`begin`, then ``after``'s, as they travel best to the parent.

        ``after`` holds what follows them outside the journal: an item's
        :class:`Failure`, or a result that did not fit. When there is none and
        the results are all ``int`` or all ``float``, and so each its record, a
        copy of their records (8 bytes each) travels in their place, and the
        parent reads it back into a list (:class:`_Records`). Else a list.
        """
        used = self._used
        if after or used < _PACK_AT_LEAST:  # a result outside the journal, or too few to matter
            return self.results() + after
        typecode: Typecode
        if self._listed is None:
            typecode = "q"
        elif self._map[_KINDS : _KINDS + used].count(_FLOAT) == used:
            typecode = "d"
        else:
            return self._listed
        return _Records(self._map[8 * _RECORDS : 8 * (_RECORDS + used)], typecode)

    def room(self) -> int:
        """Records left: how many more items :meth:`extend` may run before the next :meth:`begin`."""
        return RECORDS - self._used

    def extend(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> None:
        """Run ``fn(item)`` for each item, each result journaled before the next item starts.

        ``items`` (``room()`` at most) are the chunk's next items, after those
        journaled since :meth:`begin`. While every result is an ``int``, each
        is kept only as its record, and :meth:`results` reads them back; from
        the first result that is not, they are listed as they come as well
        (:meth:`_extend_listed`).

        Raises:
            ResultTooLarge: the journal has no room for the result of the item
                after the last one journaled (it carries the result).
            ResultUnpicklable: neither pickle nor the pool's own pickler can
                pickle the result of the item after the last one journaled.
            Exception: what ``fn`` raised, for the item after the last one journaled.
        """
        if len(items) > RECORDS - self._used:
            raise ValueError(f"{len(items)} items; the journal has room for {RECORDS - self._used}")
        rest = iter(items)  # each loop takes the items from where the one before stopped
        if self._listed is None:
            value = self._extend_with_ints(fn, rest)
            if value is _ALL_INTS:
                return
            self._listed = self.results()
            self._extend_listed(self._listed, _itself, (value,))  # journaled as the listing loop journals any result
        self._extend_listed(self._listed, fn, rest)

    def _slot_numbers(self) -> list[int]:
        """Each record's slot number, in order: made at the first map chunk, not by every worker."""
        if not self._numbers:
            self._numbers = list(range(_RECORDS, _RECORDS + RECORDS))
        return self._numbers

    def _extend_with_ints(self, fn: Callable[[Any], Any], items: Iterator[Any]) -> Any:
        """Journal the items' results while each is an ``int`` of 64 bits, kept only as its record.

        The hot path of a map of cheap items: per item, ``fn``'s call, a type
        check and a store. Leaving the results out of a list saved the append,
        about a fifth of the loop's time; taking each record's slot number from
        a list made once, where counting made an int per item, 20-25 ns of about
        175 (a no-op, in-process, on the shared 2-core machine). Only ``int``: a ``float`` needs its
        kind byte too, and results read back from records of both kinds cost
        more than the appends they saved.

        Returns:
            The first result that is not such an ``int``, not journaled (the
            items after it are left in ``items``); ``_ALL_INTS`` if none was.
        """
        slots, kind_of, number = self._slots, type, int
        numbers = iter(self._slot_numbers())
        numbers.__setstate__(self._used)  # type: ignore[attr-defined]  # from the next record's slot on
        record = _RECORDS + self._used - 1  # the slot of the last record written
        try:
            for record, item in zip(numbers, items):
                value = fn(item)  # not map(): CPython calls a Python function from here without a C frame
                if kind_of(value) is not number:
                    return value
                try:
                    slots[record] = value  # the record is whole: it counts
                except (ValueError, OverflowError):  # more than 64 bits
                    return value
            record += 1  # every item's record was written, the last one's too
        finally:
            self._used = record - _RECORDS
        return _ALL_INTS

    def _extend_listed(self, listed: list[Any], fn: Callable[[Any], Any], items: Iterable[Any]) -> None:
        """Journal the items' results, whatever they are, and append each to ``listed``.

        ``None`` and a ``bool``, what maps of side effects and of predicates
        return, are a kind byte and a record, as a ``float`` is: serialized
        into the data area, each took about 0.3 us, four times an ``int``.
        """
        slots, floats, kinds, entry = self._slots, self._floats, self._kinds, self._entry
        kind_of, number, real, truth = type, int, float, bool
        float_kind, none_kind, bool_kind = _FLOAT, _NONE, _BOOL
        numbers = iter(self._slot_numbers())
        numbers.__setstate__(self._used)  # type: ignore[attr-defined]  # from the next record's slot on
        record = _RECORDS + self._used - 1  # the slot of the last record written
        shift = _KINDS - _RECORDS
        end = self._map.tell()  # the end of the data area's entries
        try:
            for record, item in zip(numbers, items):
                value = fn(item)
                if kind_of(value) is number:
                    try:
                        slots[record] = value
                    except (ValueError, OverflowError):
                        end = entry(value, record, end)
                elif kind_of(value) is real:
                    kinds[record + shift] = float_kind
                    floats[record] = value
                elif value is None:
                    kinds[record + shift] = none_kind
                    slots[record] = 0
                elif kind_of(value) is truth:
                    kinds[record + shift] = bool_kind
                    slots[record] = value  # 0 or 1
                else:
                    end = entry(value, record, end)
                listed.append(value)  # a method call the interpreter specializes, where a bound one is not
            record += 1  # every item's record was written, the last one's too
        finally:
            self._used = record - _RECORDS

    def _entry(self, value: Any, record: int, end: int) -> int:
        """Journal ``value`` in the data area, its record at slot ``record``; return the new end of the data.

        Raises:
            ResultTooLarge: no room left.
            ResultUnpicklable: ``value`` cannot be pickled.
        """
        kind = type(value)
        if kind in _MARSHALLED:
            data = marshal.dumps(value, 2)
        elif kind is tuple and _marshalled_as_pickled(value):
            data = marshal.dumps(value, 2)
        else:
            try:
                data = self._pickler.dumps(value)
            except Exception:
                data = _pickle_otherwise(value)
        try:
            end += self._map.write(data)
        except ValueError:  # no room left
            raise ResultTooLarge(value) from None
        self._kinds[_KINDS - _RECORDS + record] = _DATA_ENTRY
        self._slots[record] = end  # written last: now it counts
        return end


def _marshalled_as_pickled(value: tuple[Any, ...]) -> bool:
    """Whether ``marshal`` (version 2) reads ``value`` back as a pickle would: a pair of numbers, say.

    Such a tuple, what a map of cheap items often returns, took 0.47 us to
    pickle with the journal's pickler, and 0.16 us to marshal. Each of its
    items must be of a type ``marshal`` writes faithfully, and none of those
    that pickle writes once and reads back as one object (a ``str``,
    ``bytes``, a ``complex``) may be in it twice: version 2 wrote a string
    twice in a tuple twice, and read it back as two (``("y" * 10000,) * 100``
    took 1 MB of the journal, its pickle 10 KB). Version 4 writes one once,
    but makes one object of equal numbers too (two NaNs that pickle reads
    back as two), and keeps a string interned: a result read after a crash
    would differ from the same result sent.
    """
    shared: list[int] | None = None  # the ids of the items pickle would write once
    for item in value:
        kind = type(item)
        if kind not in _MARSHALLED:
            return False
        if kind not in _UNSHARED:
            if shared is None:
                shared = []
            shared.append(id(item))
    return shared is None or len(set(shared)) == len(shared)


def _itself(value: Any) -> Any:
    """``value``: the function that gives a result already computed to the listing loop."""
    return value


class _Records:
    """Results that are all ``int`` or all ``float``, pickled as a copy of their journal records.

    A list of 100,000 numbers pickles in about 1.5 ms and loads in 2.5 to 4 ms;
    its records copy in 0.3 ms, and read back into a list in under 2 ms.
    """

    __slots__ = ("_raw", "_typecode")
    _pickled_plainly = True  # its reduction: records_to_list, bytes and a str (_serialization._PlainPickler)

    def __init__(self, raw: bytes, typecode: Typecode) -> None:
        self._raw = raw
        self._typecode = typecode

    def __reduce__(self) -> tuple[Callable[[bytes, Typecode], list[Any]], tuple[bytes, Typecode]]:
        return records_to_list, (self._raw, self._typecode)


def records_to_list(raw: bytes, typecode: Typecode) -> list[Any]:
    """The results whose records ``raw`` copies: ``"q"``, each an ``int``; ``"d"``, each a ``float``."""
    return memoryview(raw).cast(typecode).tolist()


class _JournalPickler(_pickle.Pickler):
    """The C pickler, reused, which pickles an exception the way the pool does (``reduce_exception``).

    Plain pickle rebuilds an exception from its ``args`` and drops its cause
    chain: one with a custom ``__init__`` would not even unpickle in the parent,
    and one with a ``__cause__`` would lose it. So an exception in a result, at
    any depth, goes as it goes in a result message; everything else is plain
    pickle's, at plain pickle's speed (``reducer_override`` is asked only about
    objects that are no ``int``, ``float``, ``str`` or ``bytes``).

    Plain pickle imports the module of a class or function it pickles by
    name. One this worker has not imported came by value (a module the
    workers would import another file for): the import ran that other file's
    code in the worker, for each result. Such a one is refused here, and the
    pool's own pickler sends it by value, as a task's result goes.
    """

    def __init__(self) -> None:
        self._stream = io.BytesIO()
        super().__init__(self._stream, protocol=5)
        self._exceptions = ExceptionsPickled()

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, BaseException):
            return reduce_exception(obj, self._exceptions)
        if isinstance(obj, (type, FunctionType)) and obj.__module__ not in sys.modules:
            raise _pickle.PicklingError(f"{obj!r} came by value")  # see above: _pickle_otherwise sends it
        return NotImplemented

    def dumps(self, value: Any) -> bytes:
        stream = self._stream
        stream.seek(0)
        stream.truncate()
        self.clear_memo()
        try:
            self.dump(value)
        finally:
            self._exceptions.clear()
        return stream.getvalue()


def _pickle_otherwise(value: Any) -> bytes:
    """The pool's own pickler (cloudpickle, functions by value), for what pickle refuses."""
    from .. import _serialization  # the worker has it already; the parent's map need not import it

    try:
        return _serialization.dumps_in_band(value)
    except Exception as error:
        raise ResultUnpicklable(value, described(error)) from None


class JournalReader:
    """The parent's side: what a dead worker finished and had not sent."""

    __slots__ = ("_map", "_signalled", "_signalled_at")

    def __init__(self, fd: int) -> None:
        with standard_numbers_held():  # in the parent, which may have closed its standard streams
            self._map = mmap.mmap(fd, JOURNAL_BYTES)  # keeps a descriptor of its own
        self._signalled = 0  # the last kill whose SIGTERM was sent (its number in _KILLS; 0: none)
        self._signalled_at = 0.0  # when (time.monotonic())

    def _slots(self) -> memoryview | None:
        """The journal's 64-bit slots, to release once read (``None``: closed, the worker is gone)."""
        try:
            return memoryview(self._map).cast("q")
        except ValueError:
            return None

    def started(self) -> int:
        """The id of the last task the worker started (0: none): while it runs, the task it runs or last ran."""
        with memoryview(self._map).cast("q") as slots:
            return slots[_STARTED]

    def stop_for(self, task_id: int) -> bool:
        """Say which task the kill about to be signalled is for (0: whatever the worker runs): :meth:`JournalWriter.declines`.

        Returns whether to send its ``SIGTERM`` now: not while the last one
        sent may still be on its way, neither declined nor obeyed yet (a kill
        called off before the worker handled it, or this one's task stopped
        since). A kill excuses one signal, and signals that come together run
        the handler once: a second one sent then came after the first was
        declined for this kill, and ended the task running then. The one on
        its way serves this kill: handled from now on, it is for this kill's
        task; handled before, :meth:`signal_owed` says so, and this kill's is
        sent then. One neither declined nor obeyed ``_ON_ITS_WAY`` seconds
        after it was sent went to a task's own handler: this kill's is sent.
        """
        slots = self._slots()
        if slots is None:  # closed: the worker is gone (signalled as it was before)
            return True
        with slots:
            slots[_STOP_FOR] = task_id  # before the count: a handler that sees the new kill sees its task
            slots[_KILLS] += 1
            # (Read after the count: a handler that read the count before says so in time for signal_owed.)
            now = time.monotonic()
            if slots[_DECLINED] < self._signalled and now < self._signalled_at + _ON_ITS_WAY:
                return False
            self._signalled, self._signalled_at = slots[_KILLS], now
            return True

    def signal_held(self) -> bool:
        """Whether :meth:`stop_for` held the last kill's ``SIGTERM`` back: :meth:`signal_owed` is to be asked until it is sent."""
        slots = self._slots()
        if slots is None:  # closed: the worker is gone
            return False
        with slots:
            return self._signalled != slots[_KILLS]

    def signal_owed(self) -> bool:
        """Whether to send the last kill's ``SIGTERM`` now: its :meth:`stop_for` held it back, and the signal on its way was declined since.

        That signal's handler read the kill before (its decline is that kill's,
        not this one's): no other signal is on its way. Handled after, it was
        this kill's, declined (:meth:`declined`) or obeyed; and a kill called
        off needs no signal.
        """
        slots = self._slots()
        if slots is None:  # closed: the worker is gone
            return False
        with slots:
            kill, declined = slots[_KILLS], slots[_DECLINED]
            if self._signalled == kill or declined < self._signalled or declined == kill or slots[_STOP_FOR] < 0:
                return False
            self._signalled, self._signalled_at = kill, time.monotonic()
            return True

    def declined(self) -> bool:
        """Whether the worker declined the ``SIGTERM`` of the last kill (:meth:`stop_for`): its task no longer ran."""
        with memoryview(self._map).cast("q") as slots:
            return slots[_KILLS] > 0 and slots[_DECLINED] == slots[_KILLS]

    def call_off(self) -> None:
        """Have the worker decline the last kill's ``SIGTERM`` whenever it comes, if its handler has not run yet.

        The kill was called off (the task ended, or the worker started
        another): handled late, the signal would end whatever runs then. The
        kill's task is marked ended for good, not left for the worker to find
        among those that ended, which it keeps only so many of: a signal that
        goes through a template a loaded machine has not run may come
        after any number of tasks.
        """
        slots = self._slots()
        if slots is None:  # closed: the worker is gone
            return
        with slots:
            if slots[_STOP_FOR] > 0:
                slots[_STOP_FOR] = -slots[_STOP_FOR]

    def cancel_sent(self) -> None:
        """Count a cancel just sent to the worker (the one thread that sends them calls this)."""
        slots = self._slots()
        if slots is None:  # closed: the worker is gone
            return
        with slots:
            slots[_CANCELS] += 1

    def unsent(self, task_id: int, received: int) -> tuple[list[Any], int] | None:
        """The results of task ``task_id``'s items from index ``received`` on, as journaled; and how many items started.

        Read only once the worker is gone. The count is of the chunk's items
        from its first (:meth:`JournalWriter.ran_up_to`): where it exceeds the
        results, the item after them was running. ``None`` if the journal
        holds no item of that task: the worker died before the chunk's first
        item, or the task is not a map chunk.

        Raises:
            Exception: whatever unpickling an entry raised (its class cannot be
                imported here, say).
        """
        with memoryview(self._map).cast("q") as slots, memoryview(self._map).cast("d") as floats:
            task, first, marker, ran = slots[0], slots[1], slots[_MARKER], slots[_RAN]
            if task != task_id or first > received:
                return None
            results: list[Any] = []
            start = _DATA
            for record in range(_RECORDS, _RECORDS + RECORDS):
                if slots[record] == marker:
                    break
                kind = self._map[_KINDS - _RECORDS + record]
                if kind == _INT:
                    results.append(slots[record])
                elif kind == _FLOAT:
                    results.append(floats[record])
                elif kind == _NONE:
                    results.append(None)
                elif kind == _BOOL:
                    results.append(slots[record] == 1)
                else:
                    end = slots[record]
                    data = self._map[start:end]
                    start = end
                    results.append(_pickle.loads(data) if data[0] == _PICKLE else marshal.loads(data))
            return results[received - first :], ran

    def close(self) -> None:
        self._map.close()
