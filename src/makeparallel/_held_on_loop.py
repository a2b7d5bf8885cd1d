"""``"sync"`` tasks admitted to run on a running event loop's thread, and the blocking waits there that run them.

A ``"sync"`` task called over a limit on a thread whose asyncio loop runs is
held until a slot frees (``_admission``). The slot frees on another thread, and
the task must still run inline, on its submitter's thread: it is listed here as
ready and scheduled on the loop (``call_soon_threadsafe``). The loop runs it
once it is free; but a blocking wait on that thread (``get()``, ``mp.gather``, a
group's end, a group's ``submit`` waiting for its own slot) keeps the loop from
running anything. Waited for there, the task never ran: the wait lasted for
good, or its whole timeout. So each such wait listens here while it blocks:
a task listed as ready wakes it, and it runs the task in place, as the loop
would have, then waits on. Every ready task of the loop, not only those it
waits for: one admitted earlier holds the slot that the awaited one needs.

Whoever comes first runs a task, a wait or the loop's callback; the other finds
nothing listed, or a task already claimed (``SyncBackend._run_held`` claims it
under the backend lock): no task runs twice.

Ctrl-C (``KeyboardInterrupt`` on the main thread, at a function's entry or a
built-in's return) may land anywhere in a run. A task taken off the list before
it was claimed was lost there: pending for good, its slots taken. So it stays
listed until its run returned (:func:`run_one`): interrupted before its claim,
it is still there for the next wait or the loop's callback; once claimed, its
run ends it if cut short (``SyncBackend._run_held``).
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["admitted", "has_ready", "listening", "run_one"]

_lock = threading.Lock()  # nothing is called under it
# By loop, the runs of its admitted tasks, oldest first; and the waits blocked on its thread now.
_ready: weakref.WeakKeyDictionary[Any, deque[Callable[[], None]]] = weakref.WeakKeyDictionary()
_wakes: weakref.WeakKeyDictionary[Any, list[Callable[[], object]]] = weakref.WeakKeyDictionary()


def admitted(loop: Any, run: Callable[[], None]) -> None:
    """``run`` (a held task's) may be called now, on ``loop``'s thread: list it, wake the waits there, tell the loop.

    Called on the admission thread, never on ``loop``'s.

    Raises:
        RuntimeError: ``loop`` is closed; ``run`` is not listed.
    """
    with _lock:
        runs = _ready.get(loop)
        if runs is None:
            runs = _ready[loop] = deque()
        runs.append(run)
        wakes = list(_wakes.get(loop, ()))
    for wake in wakes:
        wake()
    try:
        loop.call_soon_threadsafe(run_one, loop)
    except RuntimeError:
        with _lock:
            runs = _ready.get(loop)
            if runs is not None and run in runs:
                runs.remove(run)
                raise
        # else a wait on the loop's thread took it meanwhile: it runs, or ran, there


def has_ready(loop: Any) -> bool:
    """Whether a task admitted to run on ``loop``'s thread waits to."""
    with _lock:
        return bool(_ready.get(loop))


def run_one(loop: Any) -> bool:
    """Run the oldest task admitted to run on ``loop``'s thread (this one); return whether there was one.

    Listed until its run returned: a run cut short by Ctrl-C before it claimed
    its task leaves it to the next (the loop is told again). A run whose task
    ended or was claimed meanwhile does nothing, and a run within it (a wait
    in the task's code) finds it claimed.
    """
    with _lock:
        runs = _ready.get(loop)
        if not runs:
            return False
        run = runs[0]
    try:
        run()
    except BaseException:
        try:
            loop.call_soon_threadsafe(run_one, loop)  # still listed, unless claimed: the loop runs it then
        except RuntimeError:  # closed: the close ends it (SyncBackend._fail_held)
            pass
        raise
    _taken(loop, run)
    return True


def _taken(loop: Any, run: Callable[[], None]) -> None:
    """``run`` returned: list it no more (a run within it may have taken it already)."""
    with _lock:
        runs = _ready.get(loop)
        if runs is None:
            return
        try:
            runs.remove(run)
        except ValueError:
            pass
        if not runs:
            del _ready[loop]


@contextmanager
def listening(loop: Any, wake: Callable[[], object]) -> Iterator[None]:
    """Around a blocking wait on ``loop``'s thread (``loop`` runs): ``wake()`` as each task is admitted to run there.

    The wait then calls :func:`run_one` until it returns False, and waits on.
    It looks with :func:`has_ready` before it sleeps; ``wake()``, called
    after the task is listed, must end a sleep begun after that look.
    """
    with _lock:
        wakes = _wakes.get(loop)
        if wakes is None:
            wakes = _wakes[loop] = []
        wakes.append(wake)
    try:
        yield
    finally:
        with _lock:
            wakes.remove(wake)
            if not wakes and _wakes.get(loop) is wakes:
                del _wakes[loop]
