"""A worker's crash journal: the results of a map chunk's items, kept where the worker's death cannot reach them.

A worker that dies (``os._exit``, a segmentation fault, ``SIGKILL``, the
out-of-memory killer) takes its memory with it, and with it the results of the
items it finished since it last sent some. So after each item of a map chunk
the worker appends the item's result to this journal: one shared-memory file
per worker, made by the parent, without a name (``memfd_create``, or an
unlinked temporary file where that does not exist), mapped by both processes.
The pages outlive the worker; after a crash the parent reads the items the
worker finished and had not sent, and knows that the culprit is the next one.

Layout: a header of three 64-bit slots (the task's id, the index in its chunk
of the first item journaled, and the end of the entries written), then the
entries. An entry is one item's result, ``marshal`` (version 2, no references)
for the exact scalar types it writes faithfully, else a pickle; a pickle starts
with byte ``0x80``, a ``marshal`` entry never does. The end slot is written
after each entry, so a worker killed in the middle of writing one leaves the
journal as it was before it.

Cost: about a quarter of a microsecond per item (``marshal``) to a microsecond
(a small pickle), and nothing per item in the parent, which reads the journal
only after a crash. Nothing to clean up: the file has no name, and the kernel
frees it when the last of the two processes closes it.
"""

from __future__ import annotations

import io
import marshal
import mmap
import os
import pickle
import struct
from collections.abc import Callable
from typing import Any


__all__ = ["JOURNAL_BYTES", "JournalReader", "JournalWriter", "ResultTooLarge", "ResultUnpicklable", "create_journal"]

#: Bytes of a journal: a slice of a chunk that fills it is sent before its next item runs.
JOURNAL_BYTES = 1 << 20
_HEADER = struct.Struct("qqq")  # task id, index of the first entry in its chunk, end of the entries
_FIRST_ENTRY = 32
# Exact types ``marshal`` writes and reads back as they were (it writes any other
# object with the buffer protocol, a NumPy array included, as bytes: not those).
_MARSHALLED = frozenset({int, float, complex, str, bytes, bool, type(None)})
_PICKLE = 0x80  # the first byte of every pickle of protocol 2 or more


class ResultTooLarge(Exception):
    """An item's result does not fit in what is left of the journal: its slice sends it now."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ResultUnpicklable(Exception):
    """An item's result cannot be pickled, for the reason in ``problem``."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def create_journal() -> int:
    """A new journal file with no name, ``JOURNAL_BYTES`` long; return its descriptor.

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
    """The worker's side: appends the results of the items of a chunk as they end."""

    __slots__ = ("_map", "_slots", "record")

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, JOURNAL_BYTES)
        self._slots = memoryview(self._map).cast("q")
        self.record = self._recorder()

    def begin(self, task_id: int, first: int) -> None:
        """Start journaling a slice of task ``task_id``'s chunk, from its item ``first``.

        Called only after the items before ``first`` were sent to the parent.
        The old entries are dropped first, so that a worker killed in between
        leaves no entry under the wrong index.
        """
        self._slots[2] = _FIRST_ENTRY
        self._slots[1] = first
        self._slots[0] = task_id
        self._map.seek(_FIRST_ENTRY)

    def _recorder(self) -> Callable[[Any], Any]:
        """``record(value)``: journal one item's result and return it.

        Raises:
            ResultTooLarge: the result does not fit in what is left of the journal.
            ResultUnpicklable: neither pickle nor the pool's own pickler can pickle it.
        """
        write, tell, slots = self._map.write, self._map.tell, self._slots
        to_marshal, dump_marshal, dump_pickle = _MARSHALLED, marshal.dumps, pickle.dumps

        def record(value: Any) -> Any:
            if type(value) in to_marshal:
                entry = dump_marshal(value, 2)
            else:
                try:
                    entry = dump_pickle(value, 5)
                except Exception:
                    entry = _pickle_otherwise(value)
            try:
                write(entry)
            except ValueError:  # out of room
                raise ResultTooLarge(value) from None
            slots[2] = tell()  # now it counts
            return value

        return record


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

    def unsent(self, task_id: int, received: int) -> list[Any] | None:
        """The results of task ``task_id``'s items from index ``received`` on, as journaled.

        Read only once the worker is gone. ``None`` if the journal holds no
        item of that task: the worker died before the chunk's first item, or
        the task is not a map chunk.

        Raises:
            Exception: whatever unpickling an entry raised (its class cannot be
                imported here, say).
        """
        task, first, end = _HEADER.unpack_from(self._map, 0)
        if task != task_id or first > received or not _FIRST_ENTRY <= end <= JOURNAL_BYTES:
            return None
        data = self._map[_FIRST_ENTRY:end]
        stream = io.BytesIO(data)
        results = []
        while (position := stream.tell()) < len(data):
            results.append(pickle.load(stream) if data[position] == _PICKLE else marshal.load(stream))
        return results[received - first :]

    def close(self) -> None:
        self._map.close()
