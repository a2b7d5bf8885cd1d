"""The items and tasks of ``test_process_map_crash``, in a module of their own.

A worker imports the module of each function and class it unpickles by name,
and a test module imports pytest: about 0.3 s for each new worker, and these
tests crash a worker and start a new one again and again.
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import os
import signal
import sys
import threading
import time
from typing import Any

import makeparallel as mp

CULPRIT = 57


class Colour(enum.IntEnum):
    RED = 1


class Rejected(Exception):
    """An exception a task returns, whose ``__init__`` does not take its ``args``."""

    def __init__(self, row: int, reason: str) -> None:
        super().__init__(f"row {row}: {reason}")
        self.row = row


def die(how: str) -> None:
    if how == "exit":
        os._exit(7)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    import ctypes

    ctypes.string_at(0)  # segmentation fault


class Item:
    """An item of the map: where to record that it ran, how long it works, how its worker dies, what it returns."""

    def __init__(
        self, index: int, log: str, seconds: float = 0.0, how: str = "", culprits: tuple[int, ...] = (CULPRIT,)
    ) -> None:
        self.index, self.log, self.seconds, self.how, self.culprits = index, log, seconds, how, culprits
        self.result: Any = index
        self.raises = False
        self.wait_for = ""  # a file to wait for before working, until cancelled; raises after 30 s

    def __repr__(self) -> str:
        return f"Item#{self.index}"


def work(item: Item) -> Any:
    fd = os.open(item.log, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, f"{item.index}\n".encode())  # one small O_APPEND write: atomic
    finally:
        os.close(fd)
    if item.seconds:
        time.sleep(item.seconds)  # the workload of a slow item
    if item.wait_for:
        deadline = time.monotonic() + 30
        while not os.path.exists(item.wait_for):
            try:
                mp.check_cancelled()
            except mp.TaskCancelledError:
                break  # the chunk stops before its next item
            if time.monotonic() > deadline:
                raise TimeoutError(f"{item.wait_for} never appeared")
            time.sleep(0.005)
    if item.how and item.index in item.culprits:
        die(item.how)
    if item.raises:
        raise ValueError(f"bad item {item.index}")
    return item.result() if callable(item.result) else item.result


def work_at(log: str, index: int) -> Any:
    return work(Item(index, log, 0.0, "kill"))


class DiesWhenUnpickled:
    """An item whose unpickling ends the worker: it dies before its chunk's first item ran."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os._exit, (3,))

    def __repr__(self) -> str:
        return "DiesWhenUnpickled()"


def refuse_to_load(reason: str) -> Any:
    raise LookupError(reason)


class RaisesWhenUnpickled:
    """An item whose unpickling raises on a worker (it looks up what only the parent registered, say)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (refuse_to_load, ("registered in the parent only",))

    def __repr__(self) -> str:
        return "RaisesWhenUnpickled()"


class FunctionRaisingWhenUnpickled:
    """A map's function whose unpickling raises on a worker."""

    def __call__(self, x: Any) -> Any:
        return x

    def __reduce__(self) -> tuple[Any, ...]:
        return (refuse_to_load, ("no such function there",))


def identity_or_exit(parent: int, exits: bool) -> Any:
    """``identity``, as a worker unpickles it; one that ``exits`` ends that worker instead."""
    if exits and os.getpid() != parent:
        os._exit(3)
    return identity


class IdentityDyingWhenSent:
    """``identity``, whose pickling number ``dies_at`` in this process ends the worker that unpickles it."""

    def __init__(self, dies_at: int) -> None:
        self.dies_at, self.pickled, self.parent = dies_at, 0, os.getpid()

    def __call__(self, x: Any) -> Any:
        return x

    def __reduce__(self) -> tuple[Any, ...]:
        self.pickled += 1
        return (identity_or_exit, (self.parent, self.pickled == self.dies_at))


def ends_the_first_worker(flag: str, value: int) -> int:
    """``value``, in every worker but the first to unpickle it, which it ends (the first to create ``flag``)."""
    try:
        os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return value
    os._exit(3)


class DiesWhenUnpickledOnce:
    """An item whose first unpickling ends its worker, as a kill from outside would; it reads back as ``value``."""

    def __init__(self, flag: str, value: int) -> None:
        self.flag, self.value = flag, value

    def __reduce__(self) -> tuple[Any, ...]:
        return (ends_the_first_worker, (self.flag, self.value))


class DiesWhenSent:
    """A result whose second pickling ends its worker: the journal pickles it first, then the send of its chunk's results.

    So the worker dies after the item ended, between items. It reads back as
    the ``int`` it stands for.
    """

    def __init__(self, value: int) -> None:
        self.value, self.pickled = value, 0

    def __reduce__(self) -> tuple[Any, ...]:
        self.pickled += 1
        if self.pickled == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return (int, (self.value,))


def exit_at_the_culprit(x: int) -> int:
    if x == CULPRIT:
        sys.exit(3)
    return x


def identity(x: Any) -> Any:
    return x


def lock_at(x: int) -> Any:
    return threading.Lock() if x == 5 else x


PLUGIN = (
    "class Thing:\n    def __init__(self, index):\n        self.index = index\n\n\n"
    "class Refused(Exception):\n    pass\n"
)


def plugin_object_at_the_culprit(item: tuple[int, str]) -> Any:
    """Item ``CULPRIT``'s result is of a class from ``folder``, which only the worker puts on ``sys.path``.

    So the parent cannot unpickle it (``ModuleNotFoundError``).
    """
    index, folder = item
    if index != CULPRIT:
        return index
    if folder not in sys.path:
        sys.path.append(folder)
    import plugin_of_the_workers  # type: ignore[import-not-found]

    return plugin_of_the_workers.Thing(index)


def plugin_object_at_the_culprit_then_raise(item: tuple[int, str]) -> Any:
    """As :func:`plugin_object_at_the_culprit`; item ``CULPRIT + 10`` raises ``ValueError``."""
    if item[0] == CULPRIT + 10:
        raise ValueError(f"bad item {item[0]}")
    return plugin_object_at_the_culprit(item)


def logged_plugin_object_at_the_culprit(item: tuple[int, str, str, float]) -> Any:
    """As :func:`plugin_object_at_the_culprit`, each item recorded in ``log`` as it runs, then ``seconds`` long."""
    index, folder, log, seconds = item
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, f"{index}\n".encode())
    finally:
        os.close(fd)
    time.sleep(seconds)
    return plugin_object_at_the_culprit((index, folder))


def logged_refusal_at_the_culprit(item: tuple[int, str, str]) -> int:
    """Item ``CULPRIT`` raises an exception of a class only the worker imports (see ``PLUGIN``); the others return ints."""
    index, folder, log = item
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, f"{index}\n".encode())
    finally:
        os.close(fd)
    if index == CULPRIT:
        if folder not in sys.path:
            sys.path.append(folder)
        import plugin_of_the_workers  # type: ignore[import-not-found]

        raise plugin_of_the_workers.Refused(index)
    return index


def _rebuilt_away_from(index: int, parent: int) -> RebuiltAwayFrom:
    """Rebuild a :class:`RebuiltAwayFrom`; in process ``parent`` (the test's own) it raises."""
    if os.getpid() == parent:
        raise RuntimeError(f"result {index} cannot be rebuilt in the parent")
    return RebuiltAwayFrom(index, parent)


class RebuiltAwayFrom:
    """A result that pickles anywhere and unpickles anywhere but in process ``parent``."""

    def __init__(self, index: int, parent: int) -> None:
        self.index, self.parent = index, parent

    def __reduce__(self) -> tuple[Any, tuple[int, int]]:
        return _rebuilt_away_from, (self.index, self.parent)


class JoinsItsParentAwayFrom:
    """A result whose unpickling first adds it to ``parent`` (a list), then fails in process ``pid``: part-made there."""

    def __init__(self, parent: list[Any], pid: int) -> None:
        self.parent, self.pid = parent, pid

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["parent"].append(self)
        if os.getpid() == state["pid"]:
            raise RuntimeError("it cannot be rebuilt in the parent")
        self.__dict__.update(state)


def unreadable_here_at_the_culprits(item: tuple[int, str, str, tuple[int, ...]]) -> Any:
    """Items in ``culprits`` return a result the parent cannot unpickle; the others return ``(index, "ok")``.

    ``how``: ``"module"``, an object of a class from ``where``, a folder only the
    worker puts on ``sys.path`` (``ModuleNotFoundError`` in the parent); ``"reduce"``,
    a :class:`RebuiltAwayFrom` whose rebuilding raises in process ``int(where)``.
    """
    index, how, where, culprits = item
    if index not in culprits:
        return (index, "ok")
    if how == "reduce":
        return RebuiltAwayFrom(index, int(where))
    if where not in sys.path:
        sys.path.append(where)
    import plugin_of_the_workers  # type: ignore[import-not-found]

    return plugin_of_the_workers.Thing(index)


_shared_by_the_culprits: dict[int, list[Any]] = {}


def one_object_at_the_culprits(item: tuple[int, int, tuple[int, ...]]) -> Any:
    """Items in ``culprits`` return one list, the same object for all, holding a result process ``parent`` cannot unpickle.

    The others return ``(index, "ok")``. The list is pickled once in a chunk's results, and
    referred to by each culprit after the first.
    """
    index, parent, culprits = item
    if index not in culprits:
        return (index, "ok")
    shared = _shared_by_the_culprits.setdefault(parent, [])
    if not shared:
        shared.extend(["before", RebuiltAwayFrom(index, parent), "after"])
    return shared


def _rebuilt_with_errors_away_from(index: int, parent: int, how: str) -> RebuiltWithErrorsAwayFrom:
    """Rebuild a :class:`RebuiltWithErrorsAwayFrom`; in process ``parent`` it raises errors chained as ``how`` says.

    ``"cause and context"``: raised from an explicit cause while handling another
    error (its context); ``"group"``: an exception group of errors each caught here.
    """
    if os.getpid() != parent:
        return RebuiltWithErrorsAwayFrom(index, parent, how)
    if how == "group":
        caught = []
        for reason in ("first", "second"):
            try:
                raise LookupError(reason)
            except LookupError as error:
                caught.append(error)
        group: Any = vars(builtins)["ExceptionGroup"]  # Python 3.11's
        raise group(f"result {index} cannot be rebuilt in the parent", caught)
    if how == "frozen":
        raise FrozenError(f"result {index} cannot be rebuilt in the parent") from FrozenError("the cause")
    if how == "notes not a list":
        error = RuntimeError(f"result {index} cannot be rebuilt in the parent")
        error.__notes__ = None  # type: ignore[attr-defined]
        raise error
    try:
        raise LookupError("the context")
    except LookupError:
        raise RuntimeError(f"result {index} cannot be rebuilt in the parent") from ValueError("the cause")


@dataclasses.dataclass(frozen=True)
class FrozenError(Exception):
    """An error whose attributes cannot be set once made: ``__traceback__`` and ``__notes__`` neither."""

    reason: str


class RebuiltWithErrorsAwayFrom:
    """A result that unpickles anywhere but in process ``parent``, where it raises an error chained as ``how`` says."""

    def __init__(self, index: int, parent: int, how: str) -> None:
        self.index, self.parent, self.how = index, parent, how

    def __reduce__(self) -> tuple[Any, tuple[int, int, str]]:
        return _rebuilt_with_errors_away_from, (self.index, self.parent, self.how)
