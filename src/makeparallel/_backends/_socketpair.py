"""The pool's socket pairs (to the template, to each worker): blocking, whatever the process's default timeout.

``socket.setdefaulttimeout`` applies to every socket made after it, these
included, and it makes each one non-blocking at the system level. That flag
belongs to the descriptor, which the template or the worker receives: there,
wrapped as a blocking socket, a read that found nothing yet raised
``BlockingIOError``, and a task of a few MiB never arrived. In the parent, a
send to a busy worker would have timed out.

The parent's end of a worker's socket also gets a send buffer wide enough
for the tasks sent straight to an idle worker from ``submit()``
(:func:`widen_send_buffer`).
"""

from __future__ import annotations

import _socket  # not socket: imported before the template starts (``_template_start``)
import sys

from ._fd_numbers import standard_numbers_held

__all__ = ["NO_SIGNAL", "blocking_socketpair", "widen_send_buffer"]

# The flag every send on them passes: where the program set SIGPIPE back to its default (a
# command-line tool that ends quietly in a pipeline), a send to a worker that had just died
# killed the program, where a fault must touch one task. The send raises BrokenPipeError instead.
NO_SIGNAL = getattr(_socket, "MSG_NOSIGNAL", 0)  # (macOS has none)

# The send buffer asked for: Linux caps the request at net.core.wmem_max (208 KiB on most
# systems) and doubles it for its bookkeeping.
_SEND_BUFFER = 1 << 20
_SEND_BUFFER_CAP = "/proc/sys/net/core/wmem_max"
_cap: int | None = None  # net.core.wmem_max once read; 0 where it cannot be


def blocking_socketpair(kind: int) -> tuple[_socket.socket, _socket.socket]:
    """A Unix socket pair of ``kind`` (``SOCK_STREAM``, ``SOCK_SEQPACKET``), both ends blocking, numbered 3 or more.

    Raises ``OSError`` if the system refuses one (no descriptors left).
    """
    with standard_numbers_held():
        first, second = _socket.socketpair(_socket.AF_UNIX, kind)
    first.setblocking(True)
    second.setblocking(True)
    return first, second


def widen_send_buffer(sock: _socket.socket, smallest: int) -> int:
    """Widen the send buffer of ``sock``, a Unix stream socket; return the bytes one send fits in it at once.

    On Linux a send waits only once the bytes its socket holds unread reach
    the buffer's size (``SO_SNDBUF``, the kernel's bookkeeping included, about
    4% of a large send), so a send of three quarters of it to a socket whose
    reader has read what it was sent, but for a few small messages, returns
    at once. The buffer is widened only where the system's cap gives more
    than it has: the kernel sets twice the capped request even where that
    is less (a ``wmem_max`` under half of ``wmem_default``), and a narrowed
    buffer made sends wait that fitted before. Never less than ``smallest``
    (the fixed bound this replaced), even for a buffer under a third larger
    than that, which only unusual settings give; ``smallest`` elsewhere, or
    where the system refuses.
    """
    if not sys.platform.startswith("linux"):
        return smallest
    try:
        given = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF)
        if 2 * min(_SEND_BUFFER, _send_buffer_cap()) > given:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, _SEND_BUFFER)
            given = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF)
    except OSError:
        return smallest
    return max(smallest, given * 3 // 4)


def _send_buffer_cap() -> int:
    """The largest send buffer a process may ask for (``net.core.wmem_max``), read once; 0 where it cannot be."""
    global _cap
    if _cap is None:
        try:
            with open(_SEND_BUFFER_CAP, "rb") as file:
                _cap = int(file.read())
        except (OSError, ValueError):
            _cap = 0
    return _cap
