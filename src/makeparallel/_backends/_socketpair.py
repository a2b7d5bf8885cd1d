"""The pool's socket pairs (to the template, to each worker): blocking, whatever the process's default timeout.

``socket.setdefaulttimeout`` applies to every socket made after it, these
included, and it makes each one non-blocking at the system level. That flag
belongs to the descriptor, which the template or the worker receives: there,
wrapped as a blocking socket, a read that found nothing yet raised
``BlockingIOError``, and a task of a few MiB never arrived. In the parent, a
send to a busy worker would have timed out.
"""

from __future__ import annotations

import _socket  # not socket: imported before the template starts (``_template_start``)

from ._fd_numbers import standard_numbers_held

__all__ = ["NO_SIGNAL", "blocking_socketpair"]

# The flag every send on them passes: where the program set SIGPIPE back to its default (a
# command-line tool that ends quietly in a pipeline), a send to a worker that had just died
# killed the program, where a fault must touch one task. The send raises BrokenPipeError instead.
NO_SIGNAL = getattr(_socket, "MSG_NOSIGNAL", 0)  # (macOS has none)


def blocking_socketpair(kind: int) -> tuple[_socket.socket, _socket.socket]:
    """A Unix socket pair of ``kind`` (``SOCK_STREAM``, ``SOCK_SEQPACKET``), both ends blocking, numbered 3 or more.

    Raises ``OSError`` if the system refuses one (no descriptors left).
    """
    with standard_numbers_held():
        first, second = _socket.socketpair(_socket.AF_UNIX, kind)
    first.setblocking(True)
    second.setblocking(True)
    return first, second
