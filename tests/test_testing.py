"""The helpers of ``makeparallel.testing``: what they change while they run, and what they put back."""

from __future__ import annotations

import threading

import pytest

import makeparallel as mp
from makeparallel import _runtime
from makeparallel.testing import inline


def _runs_inline() -> bool:
    """Whether a function that names no backend runs here, in the caller's thread, at its call."""
    caller = threading.get_ident()
    handle = mp.parallel(threading.get_ident)()
    assert handle.wait(10)  # with a timeout: a wait without one could run a queued task here too
    return handle.get() == caller


@pytest.mark.timeout(20)
def test_inline_blocks_that_overlap_in_two_threads_put_the_default_back() -> None:
    # As tests run in threads at once do: one block opens, a second opens in
    # another thread, the first ends while the second still runs, then it ends.
    assert _runtime.default_backend_name() == "thread"
    first_open, first_may_end, first_ended = threading.Event(), threading.Event(), threading.Event()

    def first_block() -> None:
        with inline():
            first_open.set()
            first_may_end.wait(10)
        first_ended.set()

    other = threading.Thread(target=first_block)
    other.start()
    try:
        assert first_open.wait(10)
        with inline():
            first_may_end.set()
            assert first_ended.wait(10)
            assert _runs_inline()  # the first block's end did not end this one
    finally:
        first_may_end.set()
        other.join(10)
    assert _runtime.default_backend_name() == "thread"
    assert not _runs_inline()


@pytest.mark.timeout(20)
def test_inline_puts_back_the_default_it_found() -> None:
    mp.configure(backend="sync")
    with inline():
        mp.configure(backend="thread")  # changed inside: the block still ends as it began
    assert _runtime.default_backend_name() == "sync"
    _runtime.use_default_backend(None)
    with inline(), inline():
        assert _runs_inline()
    assert _runtime.default_backend_name() == "thread"
    with pytest.raises(KeyError), inline():
        raise KeyError("a failing test")
    assert not _runs_inline()
