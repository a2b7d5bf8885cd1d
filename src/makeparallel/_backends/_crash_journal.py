"""A worker's crash journal: the results of a map chunk's items, kept where the worker's death cannot reach them.

A worker that dies (``os._exit``, a segmentation fault, ``SIGKILL``, the
out-of-memory killer) takes its memory with it, and with it the results of the
items it finished since it last sent some. So after each item of a map chunk
the worker writes the item's result to this journal: one shared-memory file
per worker, made by the parent, without a name (``memfd_create``, or an
unlinked temporary file where that does not exist), mapped by both processes.
The pages outlive the worker; after a crash the parent reads the items the
worker finished and had not sent, and knows that the culprit is the next one.

Layout, in 64-bit slots: a header (the task's id, and the index in its chunk of
the first item journaled; then the id of the last task the worker started, any
task: a worker found dead with a task sent to it that it never started, killed
while idle say, had that task put back in the queue rather than failed), then one record of two slots per item (its kind, and
its value), then a data area. An ``int`` that fits in 64 bits, or a ``float``,
is its record's value (a map of cheap items mostly returns numbers, and this is
the cheapest write there is); any other result is serialized into the data
area, and its record's value is where its bytes end: ``marshal`` (version 2, no
references) for the exact scalar types it writes faithfully, else a pickle. A
record's kind is written last, and the records a slice used are zeroed before
the next slice starts, so a record counts only once it is whole: a worker
killed in the middle of writing one leaves the journal as it was before it.

Cost per item, on the worker: two slot writes for a number, a serialization and
a copy for anything else (about 0.1 and 0.3 microseconds on the machine the
benchmarks ran on); nothing in the parent, which reads the journal only after a
crash. Nothing to clean up: the file has no name, and the kernel frees it when
the last of the two processes closes it.
"""

from __future__ import annotations

import marshal
import mmap
import os
import pickle
from collections.abc import Callable
from typing import Any

__all__ = ["JOURNAL_BYTES", "SLICE_ITEMS", "JournalReader", "JournalWriter", "ResultTooLarge", "ResultUnpicklable", "create_journal"]

#: Bytes of a journal: a slice of a chunk that fills it is sent before its next item runs.
JOURNAL_BYTES = 1 << 20
#: Items a slice may hold: the journal has a record for each (256 KiB in all).
SLICE_ITEMS = 16 * 1024
_STARTED = 2  # slot of the id of the last task the worker started, map chunk or not
_FIRST_RECORD = 3  # slot of the first record's kind; slots 0 and 1: task id, first item's index
_DATA = 8 * (_FIRST_RECORD + 2 * SLICE_ITEMS)  # byte offset of the data area
_END = _FIRST_RECORD + 2 * SLICE_ITEMS  # one past the last record's slots
# Record kinds; 0 is no record (yet).
_INT, _FLOAT, _DATA_ENTRY = 1, 2, 3
# Exact types ``marshal`` writes and reads back as they were (it writes any other
# object with the buffer protocol, a NumPy array included, as bytes: not those).
_MARSHALLED = frozenset({int, float, complex, str, bytes, bool, type(None)})
_PICKLE = 0x80  # the first byte of every pickle of protocol 2 or more


class ResultTooLarge(Exception):
    """The journal has no room for the last result appended: its slice sends it now."""


class ResultUnpicklable(Exception):
    """An item's result cannot be pickled, for the reason in ``problem``."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def create_journal() -> int:
    """A new journal file with no name, ``JOURNAL_BYTES`` long and zeroed; return its descriptor.

    Its pages are allocated as they are first written.
    """
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("makeparallel-journal", os.MFD_CLOEXEC)
    else:  # pragma: no cover - macOS: an unlinked file, in memory where the system has a tmpfs
        import tempfile

        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.TemporaryFile(dir=shm) as file:
            fd = os.dup(file.fileno())
    try:
        os.ftruncate(fd, JOURNAL_BYTES)
    except BaseException:
        os.close(fd)
        raise
    return fd


class JournalWriter:
    """The worker's side: runs the items of a chunk's slice, journaling each result as it ends."""

    __slots__ = ("_floats", "_map", "_slots", "_used", "_zeros")

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, JOURNAL_BYTES)
        self._slots = memoryview(self._map).cast("q")
        self._floats = memoryview(self._map).cast("d")  # the same slots, read as floats
        self._used = 0  # records the last slice wrote
        self._zeros = memoryview(bytes(_DATA - 8 * _FIRST_RECORD))

    def started(self, task_id: int) -> None:
        """The worker starts task ``task_id`` (a map chunk or not): from now on, its death is that task's."""
        self._slots[_STARTED] = task_id

    def extend(self, results: list[Any], fn: Callable[[Any], Any], items: list[Any], task_id: int, first: int) -> None:
        """Append ``fn(item)`` to ``results`` for each item, each journaled before the next item starts.

        ``items`` (``SLICE_ITEMS`` at most) are task ``task_id``'s chunk's items
        from index ``first`` on; the items before them were sent to the
        parent, so their records are dropped first (a worker killed in between
        leaves no record under the wrong index). One loop, no call per item
        but ``fn``'s for a number: the hot path of a map of cheap items.

        Raises:
            ResultTooLarge: the journal has no room for the last result appended.
            ResultUnpicklable: neither pickle nor the pool's own pickler can
                pickle the result of the item after the last one appended.
            Exception: what ``fn`` raised, for the item after the last one appended.
        """
        if len(items) > SLICE_ITEMS:
            raise ValueError(f"a slice of {len(items)} items; the journal holds {SLICE_ITEMS}")
        slots, floats, journal, entry = self._slots, self._floats, self._map, self._entry
        if self._used:
            journal[8 * _FIRST_RECORD : 8 * (_FIRST_RECORD + 2 * self._used)] = self._zeros[: 16 * self._used]
        slots[1] = first
        slots[0] = task_id
        journal.seek(_DATA)
        append = results.append
        number, real = _INT, _FLOAT
        kind = _FIRST_RECORD  # the slot of the next record's kind
        end = _DATA  # the end of the data area's entries
        try:
            for value in map(fn, items):
                if type(value) is int:
                    try:
                        slots[kind + 1] = value
                        slots[kind] = number  # written last: now it counts
                    except ValueError:  # more than 64 bits
                        end = entry(value, kind, end, results)
                elif type(value) is float:
                    floats[kind + 1] = value
                    slots[kind] = real
                else:
                    end = entry(value, kind, end, results)
                append(value)
                kind += 2
        finally:
            self._used = (kind - _FIRST_RECORD) // 2

    def _entry(self, value: Any, kind: int, end: int, results: list[Any]) -> int:
        """Journal ``value`` in the data area, its record at slot ``kind``; return the new end of the data.

        Raises:
            ResultTooLarge: no room left; ``value`` is appended to ``results``.
            ResultUnpicklable: ``value`` cannot be pickled.
        """
        if type(value) in _MARSHALLED:
            data = marshal.dumps(value, 2)
        else:
            try:
                data = pickle.dumps(value, 5)
            except Exception:
                data = _pickle_otherwise(value)
        try:
            end += self._map.write(data)
        except ValueError:  # no room left
            results.append(value)
            raise ResultTooLarge from None
        self._slots[kind + 1] = end
        self._slots[kind] = _DATA_ENTRY  # written last: now it counts
        return end


def _pickle_otherwise(value: Any) -> bytes:
    """The pool's own pickler (cloudpickle, functions by value), for what pickle refuses."""
    from .. import _serialization  # the worker has it already; the parent's map need not import it

    try:
        return _serialization.dumps_in_band(value)
    except Exception as error:
        raise ResultUnpicklable(f"{type(error).__name__}: {error}") from None


class JournalReader:
    """The parent's side: what a dead worker finished and had not sent."""

    __slots__ = ("_map",)

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, JOURNAL_BYTES)  # keeps a descriptor of its own

    def started(self) -> int:
        """The id of the last task the worker started (0: none); read only once the worker is gone."""
        slots = memoryview(self._map).cast("q")
        try:
            return slots[_STARTED]
        finally:
            slots.release()

    def unsent(self, task_id: int, received: int) -> list[Any] | None:
        """The results of task ``task_id``'s items from index ``received`` on, as journaled.

        Read only once the worker is gone. ``None`` if the journal holds no
        item of that task: the worker died before the chunk's first item, or
        the task is not a map chunk.

        Raises:
            Exception: whatever unpickling an entry raised (its class cannot be
                imported here, say).
        """
        slots = memoryview(self._map).cast("q")
        floats = memoryview(self._map).cast("d")
        try:
            task, first = slots[0], slots[1]
            if task != task_id or first > received:
                return None
            results: list[Any] = []
            start = _DATA
            for kind in range(_FIRST_RECORD, _END, 2):
                code = slots[kind]
                if code == _INT:
                    results.append(slots[kind + 1])
                elif code == _FLOAT:
                    results.append(floats[kind + 1])
                elif code == _DATA_ENTRY:
                    end = slots[kind + 1]
                    data = self._map[start:end]
                    start = end
                    results.append(pickle.loads(data) if data[0] == _PICKLE else marshal.loads(data))
                else:
                    break
            return results[received - first :]
        finally:
            slots.release()
            floats.release()

    def close(self) -> None:
        self._map.close()
