"""The package's own descriptors are numbered 3 or more: never a standard stream's number.

A program that closed its standard streams (a daemon detaching from its
terminal) leaves 0, 1 and 2 free, and a new descriptor takes the lowest free
number. The pool's socket to its template took 1 there, and the program's
``sys.stdout`` still wrote to 1: a line a task printed, relayed to it, went
into that socket, and the template died, and every worker and task with it.
So the package makes each descriptor it keeps (a pipe, a socket, a journal,
an ``mmap``'s or a selector's own copy) while the free standard numbers are
held, and a write to a closed stream fails as it would without the package
(``EBADF``), on every backend alike.
"""

from __future__ import annotations

import os

__all__ = ["standard_numbers_held"]


class standard_numbers_held:  # a context manager, named as the functions that return one are
    """While in this block, each of 0, 1 and 2 that is free holds ``os.devnull``: a descriptor made here is numbered 3 or more.

    Costs an ``open`` and a ``close`` where none is free (about 5 us). Where
    no descriptor is left at all, none of those numbers is free either: what
    is made here then fails with its own error.
    """

    __slots__ = ("_held",)

    def __enter__(self) -> None:
        held: list[int] = []
        try:
            while True:
                fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                if fd > 2:
                    os.close(fd)
                    break
                held.append(fd)
        except OSError:  # none left (EMFILE, ENFILE)
            pass
        except BaseException:
            for fd in held:
                os.close(fd)
            raise
        self._held = held

    def __exit__(self, *exc_info: object) -> None:
        for fd in self._held:
            os.close(fd)
