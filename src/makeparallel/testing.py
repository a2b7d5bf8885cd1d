"""Helpers for testing code that uses makeparallel.

``inline()`` runs every task of functions that name no backend inline, in the
calling thread (the ``"sync"`` backend): deterministic, and breakpoints work.
``wait_until_idle()`` blocks until every submitted task has ended.
``no_retry_waits()`` makes every retry wait zero seconds, so tests of retries run fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from . import _retry, _runtime
from ._runtime import wait_until_idle as wait_until_idle

__all__ = ["inline", "no_retry_waits", "wait_until_idle"]


@contextmanager
def inline() -> Iterator[None]:
    """Within the block, functions that name no backend run on ``"sync"``."""
    previous = _runtime._default_backend
    _runtime.configure(backend="sync")
    try:
        yield
    finally:
        _runtime.use_default_backend(previous)


@contextmanager
def no_retry_waits() -> Iterator[None]:
    """Within the block, retries wait zero seconds between attempts (in every thread).

    Attempts are still counted, and ``Retry(timeout=...)`` still applies.
    """
    _retry.suspend_waits(+1)
    try:
        yield
    finally:
        _retry.suspend_waits(-1)
