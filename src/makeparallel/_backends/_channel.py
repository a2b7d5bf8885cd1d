"""One end of the socket between the parent and a worker process: framed messages, read ahead.

Each frame is an 8-byte length and the bytes. A message is a pickled tuple in
one frame, followed by its out-of-band buffers, one frame each (the message
gives their sizes).

Why not ``multiprocessing.connection.Connection``: it reads each frame with two
system calls (length, then bytes), so the parent needed a ``poll()`` per message
to learn whether another one waited; and importing it costs a worker about 15 ms
(``tempfile``, ``shutil``, compression modules). Here one ``recv`` takes
whatever is waiting, often several results at once, and :meth:`Channel.buffered`
says without a system call whether a whole message is already here. Small
frames are joined and sent with one call; large buffers are sent as they are
and received straight into their own ``bytearray``, never copied on the way.

The pool's loop thread never waits to send (:meth:`Channel.send_or_keep`):
what the socket has no room for waits here, in order, until the loop sees
room (:meth:`Channel.flush`). A worker that reads nothing (stopped with
``SIGSTOP``, or its GIL held by a thread of its task's in a long C call)
held the loop in ``sendall`` of a task larger than the socket's buffers, and
with it every other worker's results, every timeout and ``shutdown()``.
"""

from __future__ import annotations

import _pickle  # pickle's C core: a worker need not import pickle.py, nor the re it imports (_template)
import _socket
import struct
from _socket import SHUT_WR
from collections import deque

from ._socketpair import NO_SIGNAL

# A send that takes what the socket has room for and returns (every POSIX system has it).
_DONT_WAIT: int = getattr(_socket, "MSG_DONTWAIT", 0) | NO_SIGNAL

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from _socket import socket
    from collections.abc import Sequence
    from typing import Any

__all__ = ["Channel"]

_HEADER = struct.Struct("!Q")
# Bytes asked of the socket per read: below the C allocator's mmap threshold (glibc's
# is 128 KiB), since recv() allocates what it asks for. recv(256 KiB) of a small
# message took 11.7 us (an mmap, a page touched, an munmap), recv(64 KiB) 0.7 us.
_READ = 64 * 1024
_JOIN_BELOW = 64 * 1024  # smaller buffers are joined into one send


class Channel:
    """Framed messages over a connected stream socket (blocking)."""

    __slots__ = ("_cut", "_kept", "_pending", "_sock", "_start", "_unsent")

    def __init__(self, sock: socket) -> None:
        self._sock = sock
        self._pending = bytearray()  # read ahead, not yet handed out: from _start on
        self._start = 0
        self._unsent: deque[Any] = deque()  # what send_or_keep could not send yet, in order
        self._kept = False  # whether a send left some of it there (unsent), not a send under way
        self._cut = False  # a send was interrupted: what went is not known, and nothing more goes (flush)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()
        self._unsent.clear()
        self._kept = False

    def stop_waiting(self) -> None:
        """Reads from now on raise ``BlockingIOError`` where they would wait: the other end is gone, what it sent is here."""
        self._sock.setblocking(False)

    def end_writing(self) -> None:
        """Send the other end an end of file, and keep reading: its own end of file says when it is gone."""
        self._sock.shutdown(SHUT_WR)

    # -- sending ------------------------------------------------------------------------

    def send(self, message: tuple[Any, ...], buffers: Sequence[Any] = ()) -> None:
        """Send ``message`` pickled, then each buffer as it is, after what waits unsent; raises ``OSError`` if the other end is gone."""
        unsent = self._unsent
        while unsent:  # first what send_or_keep left: the messages go in order
            self._sock.sendall(unsent[0], NO_SIGNAL)
            unsent.popleft()
        self._kept = False
        for frame in _frames(message, buffers):
            self._sock.sendall(frame, NO_SIGNAL)

    def send_or_keep(self, message: tuple[Any, ...], buffers: Sequence[Any] = ()) -> bool:
        """:meth:`send` without waiting: what the socket has no room for waits for :meth:`flush`; whether all went.

        Raises ``OSError`` if the other end is gone.
        """
        if self._cut:
            raise BrokenPipeError("a send to this channel was interrupted: the stream is cut")
        self._unsent.extend(_frames(message, buffers))
        return self.flush()

    def flush(self) -> bool:
        """Send what waits unsent, as much as the socket takes now; whether all went.

        Interrupted as a send returns (a Ctrl-C), it cannot know what went: it
        sends nothing more (:attr:`cut`), where sending the part again wrote it
        twice, and the worker answered one task twice. Interrupted after, it
        keeps count of what went.

        Raises ``OSError`` if the other end is gone.
        """
        unsent = self._unsent
        part, sent = None, -1
        try:
            while unsent:
                part, sent = unsent[0], -1
                try:
                    sent = self._sock.send(part, _DONT_WAIT)
                except BlockingIOError:
                    return False
                if sent < len(part):
                    unsent[0] = memoryview(part)[sent:]
                    return False
                unsent.popleft()
        except BaseException:
            if unsent and unsent[0] is part:  # interrupted between a send and its bookkeeping
                if sent < 0:  # in the send: what went is not known
                    self._cut = True
                    unsent.clear()
                elif sent == memoryview(part).nbytes:
                    unsent.popleft()
                else:
                    unsent[0] = memoryview(part)[sent:]
            raise
        finally:
            self._kept = bool(unsent)
        return True

    @property
    def cut(self) -> bool:
        """Whether a send was interrupted where what went is not known: nothing more goes (the worker is replaced)."""
        return self._cut

    @property
    def unsent(self) -> bool:
        """Whether what was sent with :meth:`send_or_keep` waits for room to go.

        What a send left for want of room, not what a send under way holds for
        a moment: the loop thread, which watches this, saw that, went to flush,
        and waited for the lock of a sender that had lost the CPU.
        """
        return self._kept

    # -- receiving ------------------------------------------------------------------------

    def buffered(self) -> bool:
        """Whether a whole frame has already been read: :meth:`recv` returns it without waiting."""
        available = len(self._pending) - self._start
        return available >= _HEADER.size and available - _HEADER.size >= _HEADER.unpack_from(self._pending, self._start)[0]

    def recv(self) -> Any:
        """The next message, unpickled; waits for it. Raises ``EOFError`` when the other end closed."""
        return _pickle.loads(self.recv_frame())

    def recv_frame(self) -> bytearray:
        """The next frame's bytes; waits for them."""
        size = self._frame_size()
        pending, start = self._pending, self._start + _HEADER.size
        if len(pending) - start >= size:
            frame = pending[start:start + size]
            self._start = start + size
            return frame
        frame = bytearray(size)  # a large frame: read straight into place
        with memoryview(frame) as view:
            have = len(pending) - start
            view[:have] = memoryview(pending)[start:]
            del pending[:]
            self._start = 0
            while have < size:
                got = self._sock.recv_into(view[have:])
                if not got:
                    raise EOFError("the other end closed the channel")
                have += got
        return frame

    def _frame_size(self) -> int:
        while len(self._pending) - self._start < _HEADER.size:
            self._read()
        size: int = _HEADER.unpack_from(self._pending, self._start)[0]
        return size

    def _read(self) -> None:
        data = self._sock.recv(_READ)
        if not data:
            raise EOFError("the other end closed the channel")
        if self._start:
            del self._pending[:self._start]
            self._start = 0
        self._pending += data


def _frames(message: tuple[Any, ...], buffers: Sequence[Any]) -> list[Any]:
    """What sending ``message`` and ``buffers`` writes, in order: small frames joined, each large buffer as it is."""
    data = _pickle.dumps(message, protocol=5)
    parts: list[Any] = [_HEADER.pack(len(data)), data]
    frames: list[Any] = []
    for buffer in buffers:
        view = buffer.raw() if isinstance(buffer, _pickle.PickleBuffer) else memoryview(buffer).cast("B")
        if view.nbytes < _JOIN_BELOW:
            parts += (_HEADER.pack(view.nbytes), view)
            continue
        parts.append(_HEADER.pack(view.nbytes))
        frames += (b"".join(parts), view)
        parts = []
    if parts:
        frames.append(b"".join(parts))
    return frames
