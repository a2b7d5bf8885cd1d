"""A user's ``on=`` predicate (a retry policy's, a circuit breaker's), asked about an error where raising would do harm.

It is asked as a task ends, on a thread pool's worker thread or on the process
pool's loop thread. A predicate that raised there killed that thread: the task
never ended, its handle read running for good, and the process pool reported
itself dead. Its error now goes, as a note, on the error it was asked about,
which the caller of ``get()`` sees, and the answer is what the caller chose as
the safe one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ._notes import add_note

__all__ = ["ask", "note_what_it_raised"]


def ask(on: Callable[[Any], Any], error: BaseException, owner: str, otherwise: bool, meaning: str) -> bool:
    """``bool(on(error))``; where ``on`` raises, ``otherwise``, with a note on ``error``.

    ``owner`` names whose predicate it is (``"the retry policy"``), ``meaning``
    what ``otherwise`` does with the error (``"not retried"``). Any
    ``BaseException`` (``SystemExit``, a test framework's failure) is taken
    so, as a callback's is: only Ctrl-C on the main thread goes on as raised.
    """
    try:
        return bool(on(error))
    except BaseException as raised:  # the user's code, on a thread of the pool's that must go on
        if isinstance(raised, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
            raise
        note_what_it_raised(error, f"makeparallel: {meaning}: {owner}'s on= predicate", raised)
        return otherwise


def note_what_it_raised(error: BaseException, what: str, raised: BaseException) -> None:
    """Note on ``error`` that ``what`` (the user's code, asked about it) raised ``raised``, and where."""
    where = ""
    traceback = raised.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    if traceback is not None:
        code = traceback.tb_frame.f_code
        where = f" (in {code.co_name}, {code.co_filename}:{traceback.tb_lineno})"
    try:
        text = str(raised)
    except BaseException:  # noqa: BLE001  # its own __str__ raises: its type and place say enough
        text = "(its message cannot be shown)"
    add_note(error, f"{what} raised {type(raised).__name__}: {text}{where}")
