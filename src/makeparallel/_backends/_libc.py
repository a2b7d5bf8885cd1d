"""Calling a C library function (``prctl``, ``fflush``) without importing ``ctypes``.

A worker calls two libc functions before its first result: ``prctl`` for the
parent-death signal (``_parent_death``) and ``fflush`` after each task
(``_output_relay``). Importing ``ctypes`` for them took about 2 ms of a cold
pool's first result (``-X importtime``: 2.8 ms for ``ctypes``, 0.4 ms for the
``_ctypes`` C module under it). ``_ctypes`` alone can look a function up and
call it: ``dlopen``, ``dlsym`` and ``call_function``, which ``ctypes`` is built
on. They are not public, so where one is missing this falls back to ``ctypes``.

Arguments are converted as ``ctypes`` converts them without ``argtypes``: an
``int`` as a C ``int`` (sign-extended to a register), ``None`` as ``NULL``.
"""

from __future__ import annotations

import functools

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["libc_call"]

_RTLD_NOW = 2  # <dlfcn.h>


def libc_call(name: str, *arguments: int | None) -> Callable[[], int]:
    """The C function ``name`` of the running program with ``arguments`` bound: call it for its C ``int``.

    Bound once, so that a call made after every task is one C call (a
    ``functools.partial``), with no Python frame.

    Raises ``OSError`` or ``AttributeError`` where the program has no such function.
    """
    try:
        import _ctypes

        program = _ctypes.dlopen(None, _RTLD_NOW)  # type: ignore[arg-type]  # NULL: the program itself
        address = _ctypes.dlsym(program, name)
        call = _ctypes.call_function
    except (ImportError, AttributeError):  # a Python whose _ctypes lacks them
        import ctypes

        return functools.partial(getattr(ctypes.CDLL(None), name), *arguments)
    return functools.partial(call, address, arguments)
