"""A wake-up pipe: how one thread wakes another that waits in ``select``.

Both ends are non-blocking: a writer never blocks on a full pipe (one byte
waiting is enough to wake the reader), and the reader drains every byte waiting
before it looks at what changed. The parent's loop, a worker's main thread and
the template process each wait on one.
"""

from __future__ import annotations

import os

from ._fd_numbers import standard_numbers_held

__all__ = ["drain", "wakeup_pipe"]


def wakeup_pipe() -> tuple[int, int]:
    """A new pipe with both ends non-blocking and numbered 3 or more: ``(read end, write end)``.

    Raises ``OSError`` if the system refuses one (no descriptors left).
    """
    with standard_numbers_held():
        read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    return read, write


def drain(fd: int) -> None:
    """Read every byte waiting on the read end ``fd``."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
