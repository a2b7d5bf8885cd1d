"""Helpers for testing code that uses makeparallel.

``inline()`` runs every task of functions that name no backend inline, in the
calling thread (the ``"sync"`` backend): deterministic, and breakpoints work.
``wait_until_idle()`` blocks until every submitted task has ended.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from . import _runtime
from ._runtime import wait_until_idle as wait_until_idle

__all__ = ["inline", "wait_until_idle"]


@contextmanager
def inline() -> Iterator[None]:
    """Within the block, functions that name no backend run on ``"sync"``."""
    previous = _runtime._default_backend
    _runtime.configure(backend="sync")
    try:
        yield
    finally:
        _runtime.use_default_backend(previous)
