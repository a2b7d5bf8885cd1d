"""A worker that dies inside a map chunk loses only the item it was running.

One table: the ways a worker dies (``os._exit``, SIGKILL, a segmentation fault)
x ``on_error`` x items that take milliseconds or microseconds. ``"skip"`` and
``"none"`` lose only the culprit, ``"raise"`` names its index and repr, and an
item that ran is never run again (checked for items of a millisecond or more,
the documented bound). A result that cannot be pickled fails its item alone.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import makeparallel as mp

pytestmark = [
    pytest.mark.skipif(os.name != "posix", reason="the process backend is POSIX-only for now"),
    pytest.mark.timeout(120),
]

CULPRIT = 57
ITEMS = 200


def die(how: str) -> None:
    if how == "exit":
        os._exit(7)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    import ctypes

    ctypes.string_at(0)  # segmentation fault


class Item:
    """An item of the map: where to record that it ran, how long it works, how its worker dies."""

    def __init__(self, index: int, log: str, seconds: float, how: str) -> None:
        self.index, self.log, self.seconds, self.how = index, log, seconds, how

    def __repr__(self) -> str:
        return f"Item#{self.index}"


def work(item: Item) -> int:
    with open(item.log, "a") as log:  # one small O_APPEND write: atomic
        log.write(f"{item.index}\n")
    if item.seconds:
        time.sleep(item.seconds)  # the workload of a slow item
    if item.index == CULPRIT and item.how:
        die(item.how)
    return item.index


@pytest.fixture
def log(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "ran.log"
    path.touch()
    yield str(path)


def runs(log: str) -> Counter[int]:
    return Counter(int(line) for line in Path(log).read_text().split())


@pytest.mark.parametrize("seconds", [0.002, 0.0], ids=["ms-items", "us-items"])
@pytest.mark.parametrize("how", ["exit", "kill", "segfault"])
@pytest.mark.parametrize("on_error", ["skip", "none"])
def test_a_crash_loses_only_its_item(on_error: str, how: str, seconds: float, log: str) -> None:
    items = [Item(i, log, seconds, how) for i in range(ITEMS)]
    results = mp.parallel_map(work, items, backend="process", on_error=on_error)  # type: ignore[arg-type]
    expected: list[Any] = list(range(ITEMS))
    if on_error == "skip":
        expected.remove(CULPRIT)
    else:
        expected[CULPRIT] = None
    assert results == expected
    ran = runs(log)
    assert set(ran) == set(range(ITEMS))
    if seconds:
        twice = {i: n for i, n in ran.items() if n > 1 and i != CULPRIT}
        assert not twice, f"items that ran twice: {twice}"


@pytest.mark.parametrize("seconds", [0.002, 0.0], ids=["ms-items", "us-items"])
def test_with_on_error_raise_the_error_names_the_item(seconds: float, log: str) -> None:
    items = [Item(i, log, seconds, "exit") for i in range(ITEMS)]
    with pytest.raises(mp.WorkerCrashedError, match=rf"item {CULPRIT} \(Item#{CULPRIT}\) of the map crashed its worker process \(exit code 7\)"):
        mp.parallel_map(work, items, backend="process")


@pytest.mark.parametrize(("on_error", "expected"), [("skip", []), ("none", [None])])
def test_a_map_of_one_item_that_crashes_loses_only_it(on_error: str, expected: list[Any], log: str) -> None:
    results = mp.parallel_map(work, [Item(CULPRIT, log, 0.0, "exit")], backend="process", on_error=on_error)  # type: ignore[call-overload]
    assert results == expected
    assert mp.parallel_map(work, [Item(1, log, 0.0, "exit")], backend="process") == [1]  # the pool goes on


def test_a_map_of_one_item_that_crashes_names_it() -> None:
    with pytest.raises(mp.WorkerCrashedError, match=rf"item 0 \(Item#{CULPRIT}\) of the map crashed its worker process \(exit code 7\)"):
        mp.parallel_map(work, [Item(CULPRIT, os.devnull, 0.0, "exit")], backend="process")


def test_imap_unordered_goes_on_after_a_crash(log: str) -> None:
    items = [Item(i, log, 0.001, "kill") for i in range(ITEMS)]
    results = sorted(mp.imap(work, items, backend="process", ordered=False, on_error="skip"))  # type: ignore[type-var]
    assert results == [i for i in range(ITEMS) if i != CULPRIT]


def lock_at(x: int) -> Any:
    return threading.Lock() if x == 5 else x


def test_an_unpicklable_result_fails_its_item_alone() -> None:
    assert mp.parallel_map(lock_at, range(20), backend="process", on_error="none") == [
        None if x == 5 else x for x in range(20)
    ]
    with pytest.raises(mp.TaskSerializationError, match=r"the result of item 5 \(5\) could not be pickled"):
        mp.parallel_map(lock_at, range(20), backend="process")
