"""Helpers for testing code that uses makeparallel.

``inline()`` runs every task of functions that name no backend inline, in the
calling thread (the ``"sync"`` backend): deterministic, and breakpoints work.
``wait_until_idle()`` blocks until every submitted task has ended.
``no_retry_waits()`` makes every retry wait zero seconds, so tests of retries run fast.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import _retry, _runtime
from ._runtime import wait_until_idle as wait_until_idle

__all__ = ["inline", "no_retry_waits", "wait_until_idle"]

_inline_lock = threading.Lock()
_inline_blocks = 0  # inline() blocks open now, in every thread
_before_inline: Any = None  # the default backend the first of them found


@contextmanager
def inline() -> Iterator[None]:
    """Within the block, functions that name no backend run on ``"sync"``.

    The default backend is the process's, so blocks open at once share it:
    nested, or in several threads (tests run in threads). The default stays
    ``"sync"`` until the last of them ends, which puts back the one the first
    found. Each block putting back what it found instead, two blocks that
    overlapped in two threads left ``"sync"`` the default for good, and ended
    the inline running of the one still open.
    """
    global _inline_blocks, _before_inline
    with _inline_lock:
        found = _runtime._default_backend
        _runtime.configure(backend="sync")
        if _inline_blocks == 0:
            _before_inline = found
        _inline_blocks += 1
    try:
        yield
    finally:
        with _inline_lock:
            _inline_blocks -= 1
            if _inline_blocks == 0:
                _runtime.use_default_backend(_before_inline)


@contextmanager
def no_retry_waits() -> Iterator[None]:
    """Within the block, retries wait zero seconds between attempts (in every thread).

    Attempts are still counted, and ``Retry(timeout=...)`` still applies. A
    ``Retry`` subclass's own ``wait()`` is still asked (one that raises stops
    the retries, as outside the block), and its wait is zero too.
    """
    _retry.suspend_waits(+1)
    try:
        yield
    finally:
        _retry.suspend_waits(-1)
