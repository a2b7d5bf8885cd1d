"""Notes on exceptions (PEP 678), added the same way on every Python and every exception.

``BaseException.add_note`` exists from Python 3.11 only, and sets
``__notes__`` through the exception's own ``__setattr__``: a frozen
dataclass's refuses every attribute, and ``add_note`` raised its
``FrozenInstanceError`` in place of the task's error.
"""

from __future__ import annotations

__all__ = ["add_note"]


def add_note(error: BaseException, note: str) -> None:
    """Add ``note`` to ``error``'s ``__notes__``, as ``BaseException.add_note`` does, on 3.10 too.

    The first note is set past the error's own ``__setattr__``. Where
    ``__notes__`` is set and no list, the error's own, it is left as it is.
    """
    notes = getattr(error, "__notes__", None)
    if notes is None:
        object.__setattr__(error, "__notes__", [note])
    elif isinstance(notes, list):
        notes.append(note)
