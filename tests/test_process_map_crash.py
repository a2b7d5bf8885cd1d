"""A worker that dies inside a map chunk loses only the item it was running, and no item runs twice.

One table: the ways a worker dies (``os._exit``, SIGKILL of its own pid, a
segmentation fault) x ``on_error`` x items that take milliseconds (one per
slice) or microseconds (many per slice). Every item appends its index to a log
opened with ``O_APPEND`` before it works, so the log counts the runs: each item
runs exactly once, the culprit included. ``"skip"`` and ``"none"`` lose only
the culprit, ``"raise"`` names its index and repr. Then the edges of the crash
journal: results too large for it, results that cannot be pickled, items that
raised, several crashes in one chunk, and no journal left behind.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import marshal
import os
import pickle
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import makeparallel as mp
from makeparallel import _map, _process_chunks
from makeparallel._backends._crash_journal import (
    JOURNAL_BYTES,
    RECORDS,
    JournalReader,
    JournalWriter,
    ResultTooLarge,
    create_journal,
)
from makeparallel._process_chunks import Failure, run_streaming
from makeparallel._states import RUNNING
from map_crash_tasks import (
    CULPRIT,
    PLUGIN,
    Colour,
    DiesWhenSent,
    DiesWhenUnpickled,
    DiesWhenUnpickledOnce,
    FrozenError,
    FunctionRaisingWhenUnpickled,
    IdentityDyingWhenSent,
    JoinsItsParentAwayFrom,
    RaisesWhenUnpickled,
    RebuiltAwayFrom,
    RebuiltWithErrorsAwayFrom,
    exit_at_the_culprit,
    Item,
    Rejected,
    unreadable_here_at_the_culprits,
    one_object_at_the_culprits,
    identity,
    lock_at,
    logged_plugin_object_at_the_culprit,
    logged_refusal_at_the_culprit,
    plugin_object_at_the_culprit,
    plugin_object_at_the_culprit_then_raise,
    work,
    work_at,
)
from pool_helpers import fresh_process_pool, wait_for_a_dying_task_on_four, wait_until

pytestmark = [
    pytest.mark.skipif(os.name != "posix", reason="the process backend is POSIX-only for now"),
    pytest.mark.timeout(180),
]

ITEMS = 200
HOWS = ["exit", "kill", "segfault"]


@pytest.fixture
def log(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "ran.log"
    path.touch()
    yield str(path)


def runs(log: str) -> Counter[int]:
    return Counter(int(line) for line in Path(log).read_text().split())


def ran_once(log: str, indexes: range | list[int]) -> None:
    ran = runs(log)
    twice = {i: n for i, n in ran.items() if n > 1}
    assert not twice, f"items that ran more than once: {twice}"
    assert set(ran) == set(indexes), f"items that never ran: {sorted(set(indexes) - set(ran))}"


@pytest.mark.parametrize("chunksize", [None, ITEMS], ids=["adaptive-chunks", "one-chunk"])
@pytest.mark.parametrize("seconds", [0.002, 0.0], ids=["ms-items", "us-items"])
@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("on_error", ["skip", "none"])
def test_a_crash_loses_only_its_item_and_runs_none_twice(
    on_error: str, how: str, seconds: float, chunksize: int | None, log: str
) -> None:
    items = [Item(i, log, seconds, how) for i in range(ITEMS)]
    results = mp.parallel_map(work, items, backend="process", on_error=on_error, chunksize=chunksize)  # type: ignore[call-overload]
    expected: list[Any] = list(range(ITEMS))
    if on_error == "skip":
        expected.remove(CULPRIT)
    else:
        expected[CULPRIT] = None
    assert results == expected
    ran_once(log, range(ITEMS))


def test_slow_items_stop_the_first_chunks_and_each_still_runs_once(log: str) -> None:
    # Items of 30 ms overrun the 20 ms budget of a map's first chunks: they stop
    # after one item, and their other items run in chunks of their own.
    items = [Item(i, log, 0.03) for i in range(24)]
    before = mp.get_metrics("work [map]")
    assert mp.parallel_map(work, items, backend="process") == list(range(24))
    ran_once(log, range(24))
    after = mp.get_metrics("work [map]")
    assert after is not None
    workers = mp.get_process_pool_info()["num_workers"]
    assert after.total_tasks - (0 if before is None else before.total_tasks) > workers, "no first chunk stopped"


@pytest.mark.parametrize("on_error", ["raise", "none"])
def test_a_worker_killed_as_it_sends_the_results_of_a_stopped_chunk_blames_no_item(on_error: str, log: str) -> None:
    # Items of 30 ms stop the first chunks at their budget after one item, and
    # each result kills its worker as its chunk sends it: no item was running
    # then, so none is to blame, and the items not started run again.
    items = [Item(i, log, 0.03) for i in range(6)]
    for item in items:
        item.result = functools.partial(DiesWhenSent, item.index)
    assert mp.parallel_map(work, items, backend="process", on_error=on_error) == list(range(6))  # type: ignore[call-overload]
    ran_once(log, range(6))


def test_a_worker_killed_as_it_sends_the_results_of_a_full_journal_blames_no_item(log: str) -> None:
    # The journal is full after its RECORDS-th item, whose result kills the
    # worker as they are sent, before the next item starts.
    count = RECORDS + 10
    items = [Item(i, log) for i in range(count)]
    items[RECORDS - 1].result = functools.partial(DiesWhenSent, RECORDS - 1)
    assert mp.parallel_map(work, items, backend="process", chunksize=count) == list(range(count))
    ran_once(log, range(count))


def test_a_chunk_stopped_at_its_budget_says_that_no_item_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the parent reads of a worker that died after the chunk stopped, as
    # it sent its results: the two that ran, and that only those started.
    fd = create_journal()
    writer, reader = JournalWriter(fd), JournalReader(fd)
    os.close(fd)
    try:
        worker = Worker(writer)
        monkeypatch.setattr(_process_chunks, "time", worker)

        def slow(x: int) -> int:
            worker.now += 0.015
            return x

        results = run_streaming(worker, slow, range(100), 0, False, 0.02)
        assert worker.sent + results == [0, 1]
        journaled = reader.unsent(7, len(worker.sent))
        assert journaled is not None
        unsent, ran = journaled
        crashed = mp.WorkerCrashedError("its worker died")
        crashed._crash = (worker.sent + unsent, ran, "signal SIGKILL")  # type: ignore[attr-defined]
        assert _process_chunks.after_crash(crashed, list(range(100)), 0, False) == ([0, 1], 2)
    finally:
        reader.close()


def test_a_map_of_one_item_whose_worker_died_before_it_started_runs_it_again() -> None:
    # Its journal says that the item never started: the worker was killed
    # between the chunk's start and the item's.
    chunks: list[list[int]] = []

    class Handle:
        def __init__(self, outcome: Any) -> None:
            self.outcome = outcome

        def get(self) -> Any:
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            return self.outcome

    def chunk_task(fn: Any, items: list[int], start: int, keep_going: bool) -> Handle:
        chunks.append(items)
        if len(chunks) > 1:
            return Handle([fn(items[0])])
        crashed = mp.WorkerCrashedError("its worker died")
        crashed._crash = ([], 0, "signal SIGKILL")  # type: ignore[attr-defined]
        return Handle(crashed)

    assert _map._map_one_item(abs, -3, chunk_task, "raise") == [3]  # type: ignore[arg-type]
    assert chunks == [[-3], [-3]]


def test_the_items_after_a_crash_in_a_first_chunk_run_under_its_budget(
    log: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first chunks hold all the items, split between the workers. Those
    # after a crash in one must not run in one chunk on one worker, whatever they
    # cost: they stop at the budget too, and their rest is spread.
    started: list[tuple[int, int, float | None]] = []
    start_chunk = _map._Mapper._submit_chunk  # every chunk a map submits

    def recorded(self: Any, items: Any, start: int, budget: float | None, *args: Any, **options: Any) -> Any:
        started.append((start, len(items), budget))
        return start_chunk(self, items, start, budget, *args, **options)

    monkeypatch.setattr(_map._Mapper, "_submit_chunk", recorded)
    items = [Item(i, log, 0.03, "exit", culprits=(0,)) for i in range(24)]
    assert mp.parallel_map(work, items, backend="process", on_error="skip") == list(range(1, 24))
    ran_once(log, range(24))
    workers = mp.get_process_pool_info()["num_workers"]
    assert started[0] == (0, -(-24 // workers), _map._FIRST_WAVE_SECONDS)
    again = next(chunk for chunk in started if chunk[0] == 1)
    assert again == (1, started[0][1] - 1, _map._FIRST_WAVE_SECONDS)


def test_a_stopped_chunk_goes_on_while_an_earlier_one_still_runs(log: str, tmp_path: Path) -> None:
    # The map's first item waits for its last, and every other item overruns
    # the budget: the chunks after the first must be taken on as they stop at
    # their budget, not once the first one ended. (On worker processes: the
    # map never runs a chunk itself, which would stop it taking others on.)
    last_ran = tmp_path / "last-ran"
    items = [Item(i, log, 0.03) for i in range(40)]
    items[0].seconds, items[0].wait_for = 0.0, str(last_ran)
    items[0].result = functools.partial(os.path.exists, str(last_ran))  # True: it did not wait in vain
    items[-1].result = functools.partial(Path.touch, last_ran)  # None: it ran, and let the first go on
    results = mp.parallel_map(work, items, backend="process", timeout=60)
    assert results == [True, *range(1, 39), None]
    ran_once(log, range(40))


@pytest.mark.parametrize("chunksize", [None, ITEMS], ids=["adaptive-chunks", "one-chunk"])
def test_a_crash_in_a_map_over_a_range_loses_only_its_item(chunksize: int | None, log: str) -> None:
    # A range travels in chunks that are ranges; what follows the culprit runs as a range too.
    results = mp.parallel_map(
        functools.partial(work_at, log), range(ITEMS), backend="process", on_error="skip", chunksize=chunksize
    )
    assert results == [i for i in range(ITEMS) if i != CULPRIT]
    ran_once(log, range(ITEMS))
    with pytest.raises(mp.WorkerCrashedError, match=rf"item {CULPRIT} \({CULPRIT}\) of the map crashed"):
        mp.parallel_map(functools.partial(work_at, log), range(ITEMS), backend="process", chunksize=chunksize)


@pytest.mark.parametrize("seconds", [0.002, 0.0], ids=["ms-items", "us-items"])
@pytest.mark.parametrize(("how", "exit"), [("exit", r"exit code 7"), ("kill", r"signal SIGKILL\(-9\)"), ("segfault", r"signal SIGSEGV\(-11\)")])
def test_with_on_error_raise_the_error_names_the_item(how: str, exit: str, seconds: float, log: str) -> None:
    items = [Item(i, log, seconds, how) for i in range(ITEMS)]
    with pytest.raises(
        mp.WorkerCrashedError, match=rf"item {CULPRIT} \(Item#{CULPRIT}\) of the map crashed its worker process \({exit}\)"
    ):
        mp.parallel_map(work, items, backend="process", chunksize=ITEMS)
    ran = runs(log)
    assert max(ran.values()) == 1, ran
    assert set(range(CULPRIT + 1)) <= set(ran)  # one chunk: every item up to the culprit ran


@pytest.mark.parametrize("how", ["raise", "exit", "kill"])
def test_imap_hands_out_every_result_before_the_item_that_stops_it(how: str, log: str) -> None:
    # With on_error="raise", the culprit's error came at once, and the results
    # of its chunk's items before it, which had run, were lost: those sent
    # before (item 20's result is too large for the journal) and those journaled.
    items = [Item(i, log, 0.0, "" if how == "raise" else how) for i in range(ITEMS)]
    items[CULPRIT].raises = how == "raise"
    items[20].result = b"x" * (JOURNAL_BYTES + 1)
    got = []
    error = ValueError if how == "raise" else mp.WorkerCrashedError
    with pytest.raises(error, match=rf"(bad item|item) {CULPRIT}"):
        for result in mp.imap(work, items, backend="process", chunksize=ITEMS):
            got.append(result)
    assert got == [item.result for item in items[:CULPRIT]]
    ran_once(log, range(CULPRIT + 1))


@pytest.mark.parametrize("how", HOWS)
def test_the_results_not_sent_yet_are_read_from_the_journal(how: str, log: str) -> None:
    # Item 20 raised and item 40 returned too much for the journal: those two
    # slices were sent; the results of items 41 to 56 were only journaled.
    items = [Item(i, log, 0.0, how) for i in range(ITEMS)]
    items[20].raises = True
    items[40].result = b"x" * (JOURNAL_BYTES + 1)
    results = mp.parallel_map(work, items, backend="process", on_error="none", chunksize=ITEMS)
    assert results == [None if i in (20, CULPRIT) else items[i].result for i in range(ITEMS)]
    ran_once(log, range(ITEMS))


def test_a_slice_with_more_items_than_the_journal_holds_is_sent_in_parts(log: str) -> None:
    culprit = 30_000  # the journal holds 16,384 items
    items = [Item(i, log, 0.0, "kill", (culprit,)) for i in range(40_000)]
    results = mp.parallel_map(work, items, backend="process", on_error="skip", chunksize=len(items))
    assert results == [i for i in range(len(items)) if i != culprit]
    ran_once(log, range(len(items)))


def test_several_crashes_in_one_chunk_each_lose_their_item(log: str) -> None:
    culprits = (3, 57, 58, 199)
    items = [Item(i, log, 0.0, "kill", culprits) for i in range(ITEMS)]
    results = mp.parallel_map(work, items, backend="process", on_error="none", chunksize=ITEMS)
    assert results == [None if i in culprits else i for i in range(ITEMS)]
    ran_once(log, range(ITEMS))


@pytest.mark.parametrize(("on_error", "expected"), [("skip", []), ("none", [None])])
def test_a_map_of_one_item_that_crashes_loses_only_it(on_error: str, expected: list[Any], log: str) -> None:
    results = mp.parallel_map(work, [Item(CULPRIT, log, 0.0, "exit")], backend="process", on_error=on_error)  # type: ignore[call-overload]
    assert results == expected
    assert mp.parallel_map(work, [Item(1, log, 0.0, "exit")], backend="process") == [1]  # the pool goes on


@pytest.mark.parametrize(("on_error", "expected"), [("skip", [0, 1, 3, 4, 5]), ("none", [0, 1, None, 3, 4, 5])])
def test_an_item_whose_unpickling_ends_every_worker_is_found_and_fails_alone(on_error: str, expected: list[Any]) -> None:
    # Its chunk's worker dies before the chunk's first item: the chunk runs again
    # in halves, until the item is alone, and runs again once more.
    items = [0, 1, DiesWhenUnpickled(), 3, 4, 5]
    results = mp.parallel_map(identity, items, backend="process", chunksize=4, on_error=on_error)  # type: ignore[call-overload]
    assert results == expected


def test_a_chunk_whose_worker_died_before_its_first_item_does_not_call_the_progress_display() -> None:
    # Such a chunk ends with no item done (they run again): the display was called
    # with the count it had been given already, or with 0 before any item ended.
    calls: list[int] = []
    items = [0, 1, DiesWhenUnpickled(), 3, 4, 5]
    results = mp.parallel_map(
        identity, items, backend="process", chunksize=4, on_error="skip", progress=lambda done, total: calls.append(done)
    )
    assert results == [0, 1, 3, 4, 5]
    assert calls == sorted(set(calls)) and calls[0] > 0, f"the display was called again with the same count: {calls}"
    assert calls[-1] == len(items)


@pytest.mark.parametrize("count", [1, 6])
def test_a_chunk_whose_worker_died_before_its_first_item_runs_again(count: int, tmp_path: Path) -> None:
    # Its worker died as it unpickled the items (killed from outside, say): no
    # item had started, so the chunk runs again, and every item with it.
    items: list[Any] = list(range(count))
    items[count // 2] = DiesWhenUnpickledOnce(str(tmp_path / "ended"), count // 2)
    assert mp.parallel_map(identity, items, backend="process", chunksize=4) == list(range(count))
    assert (tmp_path / "ended").exists()  # a worker did die


def test_two_deaths_before_a_chunks_first_item_lose_no_item(tmp_path: Path) -> None:
    # Two items of one chunk, each ending the first worker that unpickles it (two kills
    # from outside, say): the chunk ran again once, died again, and lost all its items.
    items: list[Any] = list(range(200))
    for index in (0, 150):
        items[index] = DiesWhenUnpickledOnce(str(tmp_path / f"ended {index}"), index)
    assert mp.parallel_map(identity, items, backend="process", chunksize=200) == list(range(200))
    assert (tmp_path / "ended 0").exists() and (tmp_path / "ended 150").exists()


@pytest.mark.parametrize("chunksize", [None, 1, 4])
@pytest.mark.parametrize(
    ("on_error", "expected"),
    [("skip", [0, 1, 3, 4, 5]), ("none", [0, 1, None, 3, 4, 5])],
)
def test_an_item_whose_unpickling_raises_fails_alone(on_error: str, expected: list[Any], chunksize: int | None) -> None:
    # Its chunk's task failed with the error, and so did the map, whatever on_error said:
    # every other item was lost, and nothing named the item.
    items = [0, 1, RaisesWhenUnpickled(), 3, 4, 5]
    assert mp.parallel_map(identity, items, backend="process", chunksize=chunksize, on_error=on_error) == expected  # type: ignore[call-overload]
    ordered = mp.imap(identity, items, backend="process", chunksize=chunksize, on_error=on_error, ordered=False)  # type: ignore[call-overload]
    assert Counter(ordered) == Counter(expected)

    async def gathered() -> list[Any]:
        return [r async for r in mp.imap(identity, items, backend="process", chunksize=chunksize, on_error=on_error)]  # type: ignore[call-overload]

    assert asyncio.run(gathered()) == expected


@pytest.mark.parametrize("items", [[0, 1, RaisesWhenUnpickled(), 3, 4, 5], [RaisesWhenUnpickled()]], ids=["six", "one"])
def test_an_item_whose_unpickling_raises_is_named(items: list[Any]) -> None:
    with pytest.raises(LookupError, match="^registered in the parent only\n") as raised:
        mp.parallel_map(identity, items, backend="process", chunksize=4)
    index = items.index(next(item for item in items if isinstance(item, RaisesWhenUnpickled)))
    assert f"makeparallel: raised by item {index} (RaisesWhenUnpickled())" in raised.value.__notes__
    assert "makeparallel: raised as the worker process unpickled the task's function and arguments" in raised.value.__notes__


@pytest.mark.parametrize("count", [1, 6])
def test_a_map_whose_function_cannot_be_unpickled_fails_whatever_on_error_says(count: int) -> None:
    # Its chunks fail as a chunk of an item whose unpickling raises does: the map tells the
    # two apart, and fails with the function's error rather than fail each item with it.
    with pytest.raises(LookupError, match="^no such function there\n") as raised:
        mp.parallel_map(FunctionRaisingWhenUnpickled(), range(count), backend="process", chunksize=4, on_error="none")
    assert "makeparallel: the map's function could not be unpickled on a worker process" in raised.value.__notes__
    assert not any(note.startswith("makeparallel: raised by item") for note in raised.value.__notes__)


def test_a_map_whose_check_of_its_function_dies_checks_again() -> None:
    # The chunk of no items that tells whether the map's function unpickles was its second
    # pickling of the function. Its worker died before it told: the map re-ran the chunks of
    # its items, which could not be unpickled, 700 times a second, for good.
    fn = IdentityDyingWhenSent(dies_at=2)
    items = [RaisesWhenUnpickled(), RaisesWhenUnpickled()]
    assert mp.parallel_map(fn, items, backend="process", chunksize=2, on_error="none", timeout=60) == [None, None]
    assert fn.pickled < 10


def test_an_item_whose_unpickling_ends_every_worker_is_named() -> None:
    items = [0, 1, DiesWhenUnpickled(), 3, 4, 5]
    with pytest.raises(mp.WorkerCrashedError, match=r"item 2 \(DiesWhenUnpickled\(\)\) of the map crashed its worker process \(exit code 3\)"):
        mp.parallel_map(identity, items, backend="process", chunksize=4)
    with pytest.raises(mp.WorkerCrashedError, match=r"item 0 \(DiesWhenUnpickled\(\)\) of the map crashed its worker process \(exit code 3\)"):
        mp.parallel_map(identity, [DiesWhenUnpickled()], backend="process")


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_an_item_that_raises_system_exit_ends_the_map_with_its_index(on_error: str) -> None:
    with pytest.raises(SystemExit) as caught:
        mp.parallel_map(exit_at_the_culprit, range(ITEMS), backend="process", on_error=on_error)  # type: ignore[call-overload]
    assert caught.value.code == 3
    assert f"makeparallel: raised by item {CULPRIT} ({CULPRIT})" in caught.value.__notes__


def test_a_map_of_one_item_that_crashes_names_it() -> None:
    with pytest.raises(mp.WorkerCrashedError, match=rf"item 0 \(Item#{CULPRIT}\) of the map crashed its worker process \(exit code 7\)"):
        mp.parallel_map(work, [Item(CULPRIT, os.devnull, 0.0, "exit")], backend="process")


@pytest.fixture
def plugin_folder(tmp_path: Path) -> str:
    """A folder that only the workers put on ``sys.path``, holding the module of the culprit's result.

    The workers are cold: one kept from an earlier test had imported the
    plugin module from that test's folder, and found another file of that
    name first on ``sys.path``, this test's. A class of a module shadowed so
    goes by value (``_serialization._importable_by_name``), and the parent
    read the result the test expects unreadable.
    """
    (tmp_path / "plugin_of_the_workers.py").write_text(PLUGIN)
    fresh_process_pool(2)
    return str(tmp_path)


@pytest.mark.parametrize("on_error", ["skip", "none"])
def test_a_result_that_cannot_be_unpickled_here_fails_its_item_alone_with_chunks_of_one(
    on_error: str, plugin_folder: str
) -> None:
    items = [(i, plugin_folder) for i in range(ITEMS)]
    results = mp.parallel_map(plugin_object_at_the_culprit, items, backend="process", chunksize=1, on_error=on_error)  # type: ignore[call-overload]
    if on_error == "skip":
        assert results == [i for i in range(ITEMS) if i != CULPRIT]
    else:
        assert results == [None if i == CULPRIT else i for i in range(ITEMS)]


def _unreadable_items(how: str, plugin_folder: str, culprits: tuple[int, ...]) -> list[tuple[int, str, str, tuple[int, ...]]]:
    where = plugin_folder if how == "module" else str(os.getpid())
    return [(i, how, where, culprits) for i in range(ITEMS)]


def _map_in(mode: str, items: list[Any], on_error: str) -> list[Any]:
    fn = unreadable_here_at_the_culprits
    if mode == "imap":
        return list(mp.imap(fn, items, backend="process", on_error=on_error))  # type: ignore[call-overload]
    chunksize = 10 if mode == "chunks-of-10" else None
    return mp.parallel_map(fn, items, backend="process", chunksize=chunksize, on_error=on_error)  # type: ignore[no-any-return, call-overload]


UNREADABLE_HOWS = ["module", "reduce"]  # a class only the workers import; a rebuilding that raises here
MAP_MODES = ["chunks-of-10", "adaptive", "imap"]


@pytest.mark.parametrize("culprits", [(CULPRIT,), (CULPRIT, CULPRIT + 1, CULPRIT + 5)], ids=["one", "three"])
@pytest.mark.parametrize("on_error", ["skip", "none"])
@pytest.mark.parametrize("mode", MAP_MODES)
@pytest.mark.parametrize("how", UNREADABLE_HOWS)
def test_a_result_that_cannot_be_unpickled_here_fails_its_item_alone_in_a_chunk_of_several(
    how: str, mode: str, on_error: str, culprits: tuple[int, ...], plugin_folder: str
) -> None:
    # Each chunk's results travel together: one that could not be unpickled here
    # failed every item of its chunk (the ten of chunk 50 to 59; half the map in a
    # parallel_map's first chunks), good results lost. Only the culprits fail now.
    # Three of them share their class (or their function) in the pickle's memo.
    results = _map_in(mode, _unreadable_items(how, plugin_folder, culprits), on_error)
    if on_error == "skip":
        assert results == [(i, "ok") for i in range(ITEMS) if i not in culprits]
    else:
        assert results == [None if i in culprits else (i, "ok") for i in range(ITEMS)]


@pytest.mark.parametrize("on_error", ["skip", "none"])
@pytest.mark.parametrize("mode", ["chunks-of-10", "imap"])
def test_results_that_are_one_object_which_cannot_be_unpickled_here_all_fail(mode: str, on_error: str) -> None:
    # Two items of a chunk return the same list, which holds a result the parent
    # cannot unpickle: the pickle builds it once, in the first item, and the second
    # refers to it. The first failed; the second was handed out as the list the first
    # had begun to build, empty, as if the task had returned that.
    culprits = (CULPRIT, CULPRIT + 2)
    items = [(i, os.getpid(), culprits) for i in range(ITEMS)]
    fn = one_object_at_the_culprits
    if mode == "imap":
        results = list(mp.imap(fn, items, backend="process", chunksize=10, on_error=on_error))  # type: ignore[call-overload]
    else:
        results = mp.parallel_map(fn, items, backend="process", chunksize=10, on_error=on_error)  # type: ignore[call-overload]
    if on_error == "skip":
        assert results == [(i, "ok") for i in range(ITEMS) if i not in culprits]
    else:
        assert results == [None if i in culprits else (i, "ok") for i in range(ITEMS)]


@pytest.mark.parametrize("mode", ["chunks-of-10", "adaptive"])
@pytest.mark.parametrize("how", UNREADABLE_HOWS)
def test_a_result_that_cannot_be_unpickled_here_in_a_chunk_of_several_names_its_item(
    how: str, mode: str, plugin_folder: str
) -> None:
    items = _unreadable_items(how, plugin_folder, (CULPRIT,))
    got: list[Any] = []
    chunksize = 10 if mode == "chunks-of-10" else None
    with pytest.raises(mp.TaskSerializationError, match=rf"item {CULPRIT} \(\({CULPRIT}, '{how}', .*\) of the map ran on a worker process, but its result \(or its error\) could not be unpickled here") as caught:
        got.extend(mp.imap(unreadable_here_at_the_culprits, items, backend="process", chunksize=chunksize))
    assert isinstance(caught.value.__cause__, ModuleNotFoundError if how == "module" else RuntimeError)
    assert got == [(i, "ok") for i in range(CULPRIT)]  # the results before it, its chunk's too, handed out first


def test_a_result_that_cannot_be_unpickled_here_names_its_item_or_its_chunk(plugin_folder: str) -> None:
    items = [(i, plugin_folder) for i in range(ITEMS)]
    with pytest.raises(mp.TaskSerializationError, match=rf"item {CULPRIT} \(\({CULPRIT}, '.*'\)\) of the map ran on a worker process, but its result \(or its error\) could not be unpickled here: ModuleNotFoundError: No module named 'plugin_of_the_workers'") as caught:
        mp.parallel_map(plugin_object_at_the_culprit, items, backend="process", chunksize=1)
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)
    with pytest.raises(mp.TaskSerializationError, match=rf"item {CULPRIT} \(\({CULPRIT}, '.*'\)\) of the map ran on a worker process, but its result"):
        mp.parallel_map(plugin_object_at_the_culprit, items, backend="process", chunksize=10)


def test_results_that_cannot_be_unpickled_here_fail_before_a_later_items_error(plugin_folder: str) -> None:
    # Item 57's result cannot be read here and item 67 raises: the map raised
    # item 67's error, and nothing said that item 57's result was lost. Item 57's
    # error comes first, after the results before it.
    items = [(i, plugin_folder) for i in range(ITEMS)]
    fn = plugin_object_at_the_culprit_then_raise
    got = []
    with pytest.raises(mp.TaskSerializationError, match=rf"item {CULPRIT} \(.*\) of the map ran on a worker process"):
        for result in mp.imap(fn, items, backend="process", chunksize=ITEMS):
            got.append(result)
    assert got == list(range(CULPRIT))
    with pytest.raises(mp.TaskSerializationError, match=rf"item {CULPRIT} \(.*\) of the map"):
        mp.parallel_map(fn, items, backend="process", chunksize=ITEMS)


def test_a_chunk_stopped_at_its_budget_fails_only_the_culprit_when_its_results_cannot_be_unpickled(
    log: str, plugin_folder: str
) -> None:
    # The first chunks stop at a time budget (20 ms): the culprit, 50 ms long, first in
    # its chunk, ends it. Its items that never ran were failed too, and never ran;
    # then the items it ran failed with it.
    items = [(CULPRIT + i, plugin_folder, log, 0.05) for i in range(16)]
    results = mp.parallel_map(logged_plugin_object_at_the_culprit, items, backend="process", on_error="none")
    ran_once(log, range(CULPRIT, CULPRIT + 16))
    assert results == [None, *(CULPRIT + i for i in range(1, 16))]


def test_an_error_that_cannot_be_unpickled_here_fails_only_its_item_when_numbers_follow_it(
    log: str, plugin_folder: str
) -> None:
    # The culprit's error goes to the parent at once, and cannot be read there; the
    # results after it are numbers, sent as a copy of their journal records at the
    # chunk's end. Their count was not read from those, and every item the chunk was
    # given failed, though most never ran; then every item the chunk ran.
    items = [(CULPRIT + i, plugin_folder, log) for i in range(20_000)]
    results = mp.parallel_map(logged_refusal_at_the_culprit, items, backend="process", on_error="none")
    ran_once(log, range(CULPRIT, CULPRIT + 20_000))
    assert results == [None, *(CULPRIT + i for i in range(1, 20_000))]


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_an_item_waiting_for_a_task_whose_result_cannot_be_unpickled_raises_that_error_as_itself(
    backend: str, plugin_folder: str
) -> None:
    # The map's own workers never imported the culprit's module: they cannot read its result either.
    fresh_process_pool(2)
    inner = mp.parallel(backend="process")(plugin_object_at_the_culprit)

    def outer(index: int) -> Any:
        return inner((index, plugin_folder)).get(timeout=60)

    with pytest.raises(mp.TaskSerializationError, match=r"the result of task \d+ \(plugin_object_at_the_culprit\) came back") as caught:
        mp.parallel_map(outer, range(CULPRIT - 5, CULPRIT + 5), chunksize=4, backend=backend)
    assert f"makeparallel: raised by item 5 ({CULPRIT})" in caught.value.__notes__
    results = mp.parallel_map(outer, range(CULPRIT - 5, CULPRIT + 5), chunksize=4, backend=backend, on_error="none")
    assert results == [None if i == CULPRIT else i for i in range(CULPRIT - 5, CULPRIT + 5)]


@pytest.mark.parametrize(("on_error", "expected"), [("skip", []), ("none", [None])])
def test_a_map_of_one_item_whose_result_cannot_be_unpickled_here_loses_only_it(
    on_error: str, expected: list[Any], plugin_folder: str
) -> None:
    results = mp.parallel_map(plugin_object_at_the_culprit, [(CULPRIT, plugin_folder)], backend="process", on_error=on_error)  # type: ignore[call-overload]
    assert results == expected
    with pytest.raises(mp.TaskSerializationError, match=rf"item 0 \(\({CULPRIT}, '.*'\)\) of the map ran on a worker process, but its result"):
        mp.parallel_map(plugin_object_at_the_culprit, [(CULPRIT, plugin_folder)], backend="process")


@pytest.mark.parametrize("backend", ["thread", "sync", "process"])
def test_an_item_raising_the_crash_of_its_own_task_is_its_error_as_itself(backend: str) -> None:
    with pytest.raises(mp.WorkerCrashedError, match=r"running task \d+ \(exit_alone\) died with exit code 9") as caught:
        mp.parallel_map(wait_for_a_dying_task_on_four, range(9), chunksize=3, backend=backend)
    assert "makeparallel: raised by item 4 (4)" in caught.value.__notes__
    assert mp.parallel_map(wait_for_a_dying_task_on_four, range(9), chunksize=3, backend=backend, on_error="skip") == [
        0, 1, 2, 3, 5, 6, 7, 8
    ]


def test_imap_unordered_goes_on_after_a_crash(log: str) -> None:
    items = [Item(i, log, 0.0, "kill") for i in range(ITEMS)]
    results = sorted(mp.imap(work, items, backend="process", ordered=False, on_error="skip"))  # type: ignore[type-var]
    assert results == [i for i in range(ITEMS) if i != CULPRIT]
    ran_once(log, range(ITEMS))


def test_results_too_large_for_the_journal_are_kept_across_a_crash(log: str) -> None:
    items = [Item(i, log, 0.0, "exit") for i in range(ITEMS)]
    large = {10, 40, 55, 56}  # 56: the item just before the culprit
    for i in large:
        items[i].result = bytes([i]) * (JOURNAL_BYTES + 1)
    results = mp.parallel_map(work, items, backend="process", on_error="skip", chunksize=ITEMS)
    assert results == [items[i].result for i in range(ITEMS) if i != CULPRIT]
    ran_once(log, range(ITEMS))


def test_results_that_fill_the_journal_are_kept_across_a_crash(log: str) -> None:
    items = [Item(i, log, 0.0, "exit") for i in range(ITEMS)]
    for item in items:
        item.result = str(item.index) * (JOURNAL_BYTES // 100)  # a few hundred kB each: the journal fills up
    results = mp.parallel_map(work, items, backend="process", on_error="none", chunksize=ITEMS)
    assert results == [None if i == CULPRIT else items[i].result for i in range(ITEMS)]
    ran_once(log, range(ITEMS))


def test_rich_results_are_kept_as_they_were_across_a_crash(log: str) -> None:
    items = [Item(i, log, 0.0, "segfault") for i in range(ITEMS)]
    kinds: list[Any] = [
        lambda i: i, lambda i: float(i) / 3, lambda i: f"é{i}\udc80", lambda i: None, lambda i: i % 2 == 0,
        lambda i: bytearray(b"x" * i), lambda i: (i, [i], {"i": i}), lambda i: 2**80 + i, lambda i: complex(i, 1),
        lambda i: frozenset({i}), lambda i: memoryview(b"m" * i), lambda i: Colour.RED, lambda i: 2**63 - 1,
        lambda i: -(2**63), lambda i: 2**63, lambda i: -0.0, lambda i: float("inf"), lambda i: b"b" * i,
    ]
    for item in items:
        item.result = kinds[item.index % len(kinds)](item.index)
    results = mp.parallel_map(work, items, backend="process", on_error="skip", chunksize=ITEMS)
    expected = [items[i].result for i in range(ITEMS) if i != CULPRIT]
    assert [type(r) for r in results] == [type(e) for e in expected]
    assert results == expected
    assert [repr(r) for r in results if type(r) is float] == [repr(e) for e in expected if type(e) is float]  # -0.0
    ran_once(log, range(ITEMS))


def test_exceptions_returned_as_results_are_kept_as_they_were_across_a_crash(log: str) -> None:
    # An exception returned (not raised) is a result like any other: journaled,
    # it must come back with its class's own fields and its cause chain, even
    # when its __init__ does not take its args (plain pickle cannot rebuild it).
    items = [Item(i, log, 0.0, "kill") for i in range(ITEMS)]
    for item in items[:CULPRIT]:
        error = Rejected(item.index, "no id")
        error.__cause__ = KeyError(f"id {item.index}")
        item.result = error if item.index % 2 else (item.index, [error])
    results = mp.parallel_map(work, items, backend="process", on_error="skip", chunksize=ITEMS)
    assert results[CULPRIT:] == list(range(CULPRIT + 1, ITEMS))
    for index, result in enumerate(results[:CULPRIT]):
        error = result if index % 2 else result[1][0]
        assert type(error) is Rejected and error.args == (f"row {index}: no id",) and error.row == index
        assert type(error.__cause__) is KeyError and error.__cause__.args == (f"id {index}",)
    ran_once(log, range(ITEMS))


def test_objects_pickled_by_value_keep_their_class_across_a_crash(log: str) -> None:
    class Point:  # local: plain pickle refuses it, so it travels by value, both ways
        def __init__(self, x: int) -> None:
            self.x = x

    items = [Item(i, log, 0.0, "segfault") for i in range(ITEMS)]
    for item in items:
        item.result = Point(item.index)
    results = mp.parallel_map(work, items, backend="process", on_error="skip", chunksize=ITEMS)
    assert {type(result) for result in results} == {Point}  # this very class, not a copy of it
    assert [result.x for result in results] == [i for i in range(ITEMS) if i != CULPRIT]
    ran_once(log, range(ITEMS))


def wait_after_a_crash(log: str, tmp_path: Path, culprit: int, count: int) -> list[Item]:
    """``count`` items; ``culprit`` crashes its worker, the item after it waits for ``tmp_path / "release"``.

    Or until it is cancelled: a test that checks what a cancel stops releases it
    only if it fails, so that the item does not end before the cancel comes.
    """
    items = [Item(i, log, 0.0, "exit", (culprit,)) for i in range(count)]
    items[culprit + 1].wait_for = str(tmp_path / "release")
    mp.parallel_map(abs, range(4), backend="process")  # a warm pool: the crash comes at once
    return items


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_the_maps_timeout_holds_for_the_items_after_a_crash(ordered: bool, log: str, tmp_path: Path) -> None:
    # The items after the culprit run as a new chunk: the map waits for it with
    # what is left of its timeout, not for as long as it takes.
    items = wait_after_a_crash(log, tmp_path, 0, 4)
    try:
        with pytest.raises(mp.TaskTimeoutError, match="the map timed out after 5 s"):
            list(mp.imap(work, items, backend="process", ordered=ordered, on_error="skip", chunksize=4, timeout=5))
        assert runs(log)[1] == 1  # the new chunk ran before the timeout: the crash was handled first
    except BaseException:
        (tmp_path / "release").touch()  # item 1 is never released otherwise: only the cancel ends it
        raise
    assert wait_until(lambda: mp.get_process_pool_info()["busy_workers"] == 0, 30)
    assert runs(log) == Counter({0: 1, 1: 1})  # cancelled by the timeout: items 2 and 3 never ran


@pytest.mark.timeout(120)
def test_closing_the_map_cancels_the_items_after_a_crash(log: str, tmp_path: Path) -> None:
    items = wait_after_a_crash(log, tmp_path, 1, 6)
    results = mp.imap(work, items, backend="process", on_error="skip", chunksize=6)
    try:
        assert next(results) == 0  # at once: the crashed chunk's results up to its culprit
        assert wait_until(lambda: 2 in runs(log), 30)  # the new chunk of items 2 to 5 runs
        results.close()  # and is cancelled: item 2 sees it, and ends
    except BaseException:
        (tmp_path / "release").touch()
        raise
    assert wait_until(lambda: mp.get_process_pool_info()["busy_workers"] == 0, 30)
    assert runs(log) == Counter({0: 1, 1: 1, 2: 1})


@pytest.mark.timeout(120)
def test_an_async_map_keeps_its_event_loop_running_while_the_items_after_a_crash_run(log: str, tmp_path: Path) -> None:
    items = wait_after_a_crash(log, tmp_path, 0, 4)

    async def release_once_the_new_chunk_runs() -> None:
        while 1 not in runs(log):
            await asyncio.sleep(0.01)
        (tmp_path / "release").touch()

    async def main() -> list[Any]:
        releasing = asyncio.ensure_future(release_once_the_new_chunk_runs())
        results = [r async for r in mp.imap(work, items, backend="process", on_error="none", chunksize=4)]
        await releasing
        return results

    try:
        assert asyncio.run(main()) == [None, 1, 2, 3]
    finally:
        (tmp_path / "release").touch()
    ran_once(log, range(4))


def test_an_item_that_raised_before_the_crash_keeps_its_error(log: str) -> None:
    items = [Item(i, log, 0.0, "kill") for i in range(ITEMS)]
    items[20].raises = items[56].raises = True
    results = mp.parallel_map(work, items, backend="process", on_error="none", chunksize=ITEMS)
    assert results == [None if i in (20, 56, CULPRIT) else i for i in range(ITEMS)]
    ran_once(log, range(ITEMS))


def test_an_unpicklable_result_fails_its_item_alone() -> None:
    assert mp.parallel_map(lock_at, range(20), backend="process", on_error="none") == [
        None if x == 5 else x for x in range(20)
    ]
    with pytest.raises(mp.TaskSerializationError, match=r"the result of item 5 \(5\) could not be pickled"):
        mp.parallel_map(lock_at, range(20), backend="process")


@pytest.mark.parametrize("count", [1, 40], ids=["a map of one item", "a map of 40"])
def test_an_unpicklable_item_is_named_at_submission(count: int) -> None:
    # The error named the chunk task's argument ("argument 1 (list)"), not the item.
    items: list[Any] = list(range(count))
    items[count // 3] = threading.Lock()
    pattern = rf"item {count // 3} \(<unlocked _thread\..*\) of the map cannot be sent to a worker process: TypeError"
    with pytest.raises(mp.TaskSerializationError, match=pattern):
        mp.parallel_map(str, items, backend="process")


UNSENDABLE = 120  # the index of the item that cannot be pickled, of ITEMS


def items_with_a_lock_at(log: str, at: int, kind: str) -> Any:
    """``ITEMS`` items of ``work``, item ``at`` a lock (it cannot be pickled), as a list, a tuple or a generator."""
    items: list[Any] = [Item(i, log, culprits=()) for i in range(ITEMS)]
    items[at] = threading.Lock()
    if kind == "list":  # sliced, of known length
        return items
    if kind == "tuple":  # iterated, of known length
        return tuple(items)
    return (item for item in items)  # iterated, of unknown length


def unsendable_pattern(at: int) -> str:
    return rf"^item {at} \(<unlocked _thread\..*\) of the map cannot be sent to a worker process: TypeError"


@pytest.mark.parametrize("at", [0, 1, UNSENDABLE], ids=["first", "second", "later"])
@pytest.mark.parametrize("chunksize", [None, 7, ITEMS], ids=["adaptive-chunks", "chunks-of-7", "one-chunk"])
@pytest.mark.parametrize("kind", ["list", "tuple", "generator"])
@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
@pytest.mark.parametrize("way", ["for", "async for", "parallel_map"])
def test_an_unpicklable_item_ends_the_map_after_the_items_before_it(
    way: str, ordered: bool, kind: str, chunksize: int | None, at: int, log: str
) -> None:
    # The map raised at the submission of the chunk holding the item, and handed out
    # the results of the chunks that had ended by then only: 1 result of 500 of a list.
    # Now the items before it run (those of its chunk too, in a chunk of their own),
    # their results are handed out, then the error naming the item is raised, as
    # for an input that raises there. No item after it runs, none twice.
    items = items_with_a_lock_at(log, at, kind)
    calls: list[tuple[int, int | None]] = []
    options: dict[str, Any] = {
        "backend": "process",
        "ordered": ordered,
        "chunksize": chunksize,
        "timeout": 60,
        "progress": lambda done, total: calls.append((done, total)),
    }
    got: list[Any] = []
    with pytest.raises(mp.TaskSerializationError, match=unsendable_pattern(at)) as caught:
        if way == "parallel_map":
            mp.parallel_map(work, items, **options)
        elif way == "for":
            got.extend(mp.imap(work, items, **options))  # keeps what it took before the error
        else:

            async def main() -> None:
                async for result in mp.imap(work, items, **options):
                    got.append(result)

            asyncio.run(main())
    assert isinstance(caught.value.__cause__, mp.TaskSerializationError)
    if way != "parallel_map":
        assert (got if ordered else sorted(got)) == list(range(at))
    ran_once(log, range(at))
    assert calls[-1:] == ([(at, None if kind == "generator" else ITEMS)] if at else [])


def test_an_unpicklable_item_leaves_nothing_running_on_the_workers(log: str) -> None:
    # The chunks in flight before it end, and the pool takes the next map at once.
    items = items_with_a_lock_at(log, UNSENDABLE, "list")
    with pytest.raises(mp.TaskSerializationError, match=unsendable_pattern(UNSENDABLE)):
        list(mp.imap(work, items, backend="process", chunksize=3))
    assert mp.parallel_map(identity, range(50), backend="process") == list(range(50))
    ran_once(log, range(UNSENDABLE))


def test_an_unpicklable_item_maps_on_threads(log: str) -> None:
    # Threads pickle nothing: the item is handed to the function as any other.
    items = items_with_a_lock_at(log, UNSENDABLE, "generator")
    assert mp.parallel_map(identity, items, backend="thread")[UNSENDABLE].locked() is False


class PicklesOnlyOnTurns:
    """An item whose pickling fails except on the turns given (1 its first), whatever else is pickled with it.

    It stands for an item that pickles alone but not with the items of its chunk
    (a recursion limit reached by the chunk as a whole, an object shared by items
    that pickles only once) or not the first time: what the chunk's failure comes
    from, not the item alone. It is never sent, so it needs no unpickling. The
    submission of its chunk pickles the chunk task's call (turn 1), then each of
    its arguments to name the culprit (turn 2, the items' list); the map then
    pickles each item alone (turn 3), then the chunk again.
    """

    def __init__(self, turns: set[int], always_after: bool) -> None:
        self.turns, self.always_after, self.taken = turns, always_after, 0

    def __reduce__(self) -> Any:
        self.taken += 1
        if self.taken in self.turns or (self.always_after and self.taken > max(self.turns)):
            return (PicklesOnlyOnTurns, (self.turns, self.always_after))
        raise RuntimeError(f"refused on turn {self.taken}")


@pytest.mark.parametrize("at", [0, UNSENDABLE], ids=["first", "later"])
@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
@pytest.mark.parametrize("way", ["for", "parallel_map"])
def test_an_item_that_pickles_alone_but_not_in_its_chunk_ends_the_map_after_the_items_before_it(
    way: str, ordered: bool, at: int, log: str
) -> None:
    # Where each item of a chunk that could not be pickled pickled alone, the map
    # raised the chunk task's error ("task 3 ... cannot be sent") from its read-ahead:
    # the results of the chunks in flight were lost and no item was named. Now the
    # item the chunk fails with (with those before it) is named, as one that cannot
    # be pickled alone is, once the results before it are handed out.
    items: list[Any] = [Item(i, log, culprits=()) for i in range(ITEMS)]
    items[at] = PicklesOnlyOnTurns({3}, always_after=False)  # alone; never with its chunk
    got: list[Any] = []
    options: dict[str, Any] = {"backend": "process", "ordered": ordered, "chunksize": 7, "timeout": 60}
    pattern = (
        rf"^item {at} \(<.*\) of the map cannot be sent to a worker process with the items "
        rf"before it in its chunk \(items {at - at % 7} to {at}\): RuntimeError: refused on turn .*chunksize=1"
    )
    with pytest.raises(mp.TaskSerializationError, match=pattern) as caught:
        if way == "parallel_map":
            mp.parallel_map(work, items, **options)
        else:
            got.extend(mp.imap(work, items, **options))
    assert isinstance(caught.value.__cause__, mp.TaskSerializationError)
    if way != "parallel_map":
        assert (got if ordered else sorted(got)) == list(range(at))
    ran_once(log, range(at))


@pytest.mark.parametrize("way", ["for", "parallel_map"])
def test_a_chunk_whose_pickling_fails_once_ends_the_map_after_the_items_before_it(way: str, log: str) -> None:
    # Its pickling failed once, not again: no item can be named. The map raised the
    # chunk task's error from its read-ahead, and lost the results in flight; now the
    # chunk ends the input, and the error says it could not be pickled and what to do.
    items: list[Any] = [Item(i, log, culprits=()) for i in range(ITEMS)]
    at, start = 122, 119  # the item, and the first of its chunk of 7
    items[at] = PicklesOnlyOnTurns({2}, always_after=True)  # refused on its first turn only
    got: list[Any] = []
    pattern = (
        rf"^the chunk of items {start} to {start + 6} of the map could not be sent to a worker process "
        r"\(RuntimeError: refused on turn 1\), though each item alone can be pickled.*chunksize=1"
    )
    with pytest.raises(mp.TaskSerializationError, match=pattern) as caught:
        if way == "parallel_map":
            mp.parallel_map(work, items, backend="process", chunksize=7, timeout=60)
        else:
            got.extend(mp.imap(work, items, backend="process", chunksize=7, timeout=60))
    assert isinstance(caught.value.__cause__, mp.TaskSerializationError)
    if way != "parallel_map":
        assert got == list(range(start))
    ran_once(log, range(start))


class NestsTooDeepInATask:
    """An item nested so deep that it pickles alone but not inside a chunk task's call (nor, ``always``, with its chunk).

    The call wraps it in more levels (the arguments, the items' list) and is
    pickled further down the stack than the map tries it again: where the
    recursion limit falls between the two, only the submission fails (turn 1;
    turn 2 names the task's argument, turn 3 pickles the item alone). It stands
    for that, as pickling raises then.
    """

    def __init__(self, always: bool) -> None:
        self.always, self.taken = always, 0

    def __reduce__(self) -> Any:
        self.taken += 1
        if self.taken == 1 or (self.always and self.taken > 3):
            raise RecursionError("maximum recursion depth exceeded while pickling an object")
        return (NestsTooDeepInATask, (self.always,))


@pytest.mark.parametrize("always", [False, True], ids=["in-the-task", "with-its-chunk"])
@pytest.mark.parametrize("chunksize", [1, 7])
def test_an_item_nested_too_deep_for_its_chunk_task_is_told_as_such(chunksize: int, always: bool, log: str) -> None:
    # Its chunk failed with a recursion limit, and the item pickled alone: the map said the
    # chunk's pickling "does not fail the same way twice", or that the item failed "with the
    # items before it", and advised chunksize=1, which fails alike (a list nested some 490
    # deep on 3.10 and 3.11; chunksize=1 named "items 3 to 3"). The fault is the item's
    # depth: the error says so, and how to get past it.
    items: list[Any] = [Item(i, log, culprits=()) for i in range(ITEMS)]
    at = 122
    start = at - at % chunksize
    items[at] = NestsTooDeepInATask(always)
    got: list[Any] = []
    if always:
        pattern = rf"^item {at} \(<.*\) of the map cannot be sent to a worker process in its chunk: it nests too deep"
        before = at
    else:
        pattern = rf"^the chunk of items {start} to {start + chunksize - 1} of the map could not be sent to a worker process: it nests too deep"
        before = start
    pattern += r" to pickle \(.*recursion.*\).*recursion limit.*sys.setrecursionlimit"
    with pytest.raises(mp.TaskSerializationError, match=pattern) as caught:
        got.extend(mp.imap(work, items, backend="process", chunksize=chunksize, timeout=60))
    assert "chunksize=1" not in str(caught.value)
    assert "fail the same way twice" not in str(caught.value)
    assert isinstance(caught.value.__cause__, mp.TaskSerializationError)
    assert got == list(range(before))
    ran_once(log, range(before))


class HoldsALock:
    """An object a bound method of which cannot be pickled: it holds a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def double(self, x: int) -> int:
        return 2 * x


@pytest.mark.parametrize("count", [1, 40], ids=["a map of one item", "a map of 40"])
@pytest.mark.parametrize("lazy", [False, True], ids=["parallel_map", "imap"])
def test_an_unpicklable_function_is_named_at_submission(count: int, lazy: bool) -> None:
    # The error named the chunk task's argument ("argument 0 (method)"), not the map's function.
    method = HoldsALock().double
    pattern = r"the map's function .*HoldsALock.double.* cannot be sent to a worker process: TypeError: cannot pickle"
    with pytest.raises(mp.TaskSerializationError, match=pattern) as caught:
        if lazy:
            list(mp.imap(method, range(count), backend="process"))
        else:
            mp.parallel_map(method, range(count), backend="process", on_error="skip")
    assert "argument 0" not in str(caught.value)
    assert isinstance(caught.value.__cause__, mp.TaskSerializationError)


def test_an_unpicklable_result_then_a_crash_lose_their_two_items(log: str) -> None:
    items = [Item(i, log, 0.0, "exit") for i in range(ITEMS)]
    items[30].result = threading.Lock
    results = mp.parallel_map(work, items, backend="process", on_error="skip", chunksize=ITEMS)
    assert results == [i for i in range(ITEMS) if i not in (30, CULPRIT)]
    ran_once(log, range(ITEMS))


# -- no journal left behind ---------------------------------------------------------------------------


def journal_mappings() -> int:
    """The crash journals this process has mapped (one per worker)."""
    return Path("/proc/self/maps").read_text().count("makeparallel-journal")


def open_files() -> list[str]:
    """What this process's file descriptors point to."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile (the listing's own descriptor)
    return found


def journal_descriptors() -> int:
    return sum("makeparallel-journal" in path for path in open_files())


def one_journal_per_worker() -> bool:
    """Whether this process holds exactly one journal per live worker (the loop replaces dead ones)."""
    live = mp.get_process_pool_info()["live_workers"]
    return journal_mappings() == live and journal_descriptors() == live


def shm_in_use() -> set[str]:
    """What this process has under /dev/shm, open or mapped (other libraries' semaphores included)."""
    mapped = {line.split(maxsplit=5)[-1] for line in Path("/proc/self/maps").read_text().splitlines()}
    return {p for p in (*mapped, *open_files()) if p.startswith("/dev/shm/")}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc (Linux)")
def test_crashed_and_stopped_workers_leave_no_journal(log: str) -> None:
    before = shm_in_use()
    for how in HOWS:
        items = [Item(i, log, 0.0, how) for i in range(ITEMS)]
        mp.parallel_map(work, items, backend="process", on_error="skip", chunksize=ITEMS)
        assert shm_in_use() <= before  # the journal has no name: nothing in /dev/shm to leak
        assert wait_until(one_journal_per_worker, 30), (mp.get_process_pool_info(), journal_mappings())
    assert mp.shutdown(5) is True
    assert journal_mappings() == 0
    assert journal_descriptors() == 0


def test_the_journal_keeps_every_result_until_the_chunk_begins_again() -> None:
    fd = create_journal()
    writer, reader = JournalWriter(fd), JournalReader(fd)
    os.close(fd)
    try:
        writer.begin(7, 0)
        writer.ran_up_to(7)
        writer.extend(lambda i: i - 2, [0, 1, 2])
        writer.extend(lambda i: [i, float(i) / 3, str(i), 2**70 + i][i % 4], [3, 4, 5, 6])
        assert reader.unsent(7, 0) == (writer.results(), 7)
        assert writer.results() == [-2, -1, 0, 2**70 + 3, 4, 5 / 3, "6"]
        assert reader.unsent(7, 5) == ([5 / 3, "6"], 7)  # the parent received the first five
        assert reader.unsent(8, 0) is None  # another task's journal
        writer.begin(7, 7)  # the seven were sent
        assert reader.unsent(7, 7) == ([], 7)  # and none started since
        assert reader.unsent(7, 0) is None  # it holds nothing from before item 7
        writer.ran_up_to(9)
        writer.extend(lambda i: -1.5, [7])
        assert reader.unsent(7, 7) == ([-1.5], 9)  # item 8 started, and did not end
        assert writer.results() == [-1.5]
        with pytest.raises(ValueError, match="room for 16383"):
            writer.extend(str, [0] * RECORDS)
    finally:
        reader.close()


def test_none_and_bools_are_their_records_and_read_back_as_they_were() -> None:
    # Serialized into the data area, each took four times an int's record (a map of a
    # predicate, or of side effects returning None).
    fd = create_journal()
    writer, reader = JournalWriter(fd), JournalReader(fd)
    os.close(fd)
    try:
        values = [None, True, False, 1, 0, "s", None, 2.5, True]
        writer.begin(7, 0)
        writer.ran_up_to(len(values))
        start = writer._map.tell()
        writer.extend(values.__getitem__, range(len(values)))
        assert writer._map.tell() - start == len(marshal.dumps("s", 2))  # the one result in the data area
        results, ran = reader.unsent(7, 0)
        assert (repr(results), ran) == (repr(values), len(values))  # True, not 1
        assert repr(writer.results()) == repr(values)
    finally:
        reader.close()


Point = collections.namedtuple("Point", "x y")


def test_a_tuple_of_scalars_is_marshalled_and_read_back_as_a_pickle_would_be() -> None:
    # A pair of numbers, what cheap maps often return, went through the pickler (0.9 us an
    # item in the journal's loop, against 0.55 us marshalled). marshal would write a bytearray
    # as bytes, and a namedtuple as a tuple: those still go through the pickler. So does a
    # tuple with a string twice, which marshal (version 2) wrote twice and read back as two
    # strings; its version 4 would make one object of two equal numbers, which pickle keeps two.
    fd = create_journal()
    writer, reader = JournalWriter(fd), JournalReader(fd)
    os.close(fd)
    try:
        scalars = (1, 2.5, float("nan"), -0.0, 2**70, "\udc80", b"b", None, True, 1j)
        text, nan, big = "s" * 10_000, float("nan"), 10**20 + 7
        values = [scalars, (), (bytearray(b"x"), 1), Point(1, 2), ((1, 2), 3), (text,) * 200, (nan, nan, big, big)]
        writer.begin(7, 0)
        writer.ran_up_to(len(values))
        start = writer._map.tell()
        writer.extend(values.__getitem__, range(1))
        assert writer._map[start : writer._map.tell()] == marshal.dumps(scalars, 2)
        writer.extend(values.__getitem__, range(1, len(values)))
        assert writer._map.tell() - start < 20_000  # the string once (2 MB, and no room, if each time)
        results, _ = reader.unsent(7, 0)
        assert repr(results) == repr(values)
        assert [type(result) for result in results] == [type(value) for value in values]
        assert type(results[2][0]) is bytearray
        for result, value in zip(results, values):  # which items are one object: as a pickle has them
            sent = pickle.loads(pickle.dumps(value, protocol=5))
            assert [[a is b for b in result] for a in result] == [[a is b for b in sent] for a in sent]
    finally:
        reader.close()


NUMBERS = {
    "ints": [0, -1, 2**63 - 1, -(2**63), 5] * 20,
    "floats": [0.0, -0.0, float("inf"), 1 / 3, -2.5, float("nan")] * 20,
}
NOT_ALL_ONE_KIND = {
    "ints and floats": [1, 2.0] * 50,
    "bools": [True, False] * 50,
    "an int subclass": [Colour.RED] * 100,
    "an int over 64 bits": [1] * 99 + [2**64],
    "strings": ["1"] * 100,
    "numbers, then others": [1, 2.5] * 25 + ["a", 3, 4.5, None] * 25,
}


def journaled(values: list[Any]) -> JournalWriter:
    """A journal whose chunk's results are ``values``, each journaled as it came."""
    fd = create_journal()
    writer = JournalWriter(fd)
    os.close(fd)
    writer.begin(7, 0)
    writer.extend(values.__getitem__, range(len(values)))
    return writer


@pytest.mark.parametrize("values", list(NUMBERS.values()), ids=list(NUMBERS))
def test_a_chunks_numbers_travel_as_their_records_and_arrive_as_they_were(values: list[Any]) -> None:
    packed = journaled(values).packed([])
    assert type(packed) is not list
    data = pickle.dumps(packed, protocol=5)
    assert len(data) < 8 * len(values) + 200, "not sent as 8 bytes a number"
    arrived = pickle.loads(data)
    assert type(arrived) is list
    assert repr(arrived) == repr(values)  # nan, -0.0 and every type included


@pytest.mark.parametrize("values", list(NOT_ALL_ONE_KIND.values()), ids=list(NOT_ALL_ONE_KIND))
def test_results_not_all_int_or_all_float_travel_as_they_are(values: list[Any]) -> None:
    writer = journaled(values)
    assert repr(writer.results()) == repr(values)  # each of its own type, as it was
    packed = writer.packed([])
    assert type(packed) is list and repr(packed) == repr(values)


@pytest.mark.parametrize("values", [*NUMBERS.values(), *NOT_ALL_ONE_KIND.values()], ids=[*NUMBERS, *NOT_ALL_ONE_KIND])
def test_a_result_outside_the_journal_travels_after_those_in_it(values: list[Any]) -> None:
    failure = Failure(ValueError("item 100"))
    packed = journaled(values).packed([failure])
    assert type(packed) is list and repr(packed) == repr([*values, failure])


def test_a_result_too_large_for_the_journal_travels_after_those_in_it() -> None:
    large = b"x" * (JOURNAL_BYTES + 1)
    writer = journaled([1, 2.5, 3])
    with pytest.raises(ResultTooLarge) as raised:
        writer.extend(lambda i: large, [3])
    assert raised.value.value is large
    assert writer.done == 3 and writer.results() == [1, 2.5, 3]
    assert writer.packed([large]) == [1, 2.5, 3, large]


@pytest.mark.parametrize("values", [*NUMBERS.values(), NOT_ALL_ONE_KIND["bools"]], ids=[*NUMBERS, "bools"])
def test_a_map_of_numbers_longer_than_the_journal_returns_them_as_they_were(values: list[Any]) -> None:
    many = values * (2 * RECORDS // len(values) + 1)  # more than a journal's worth: sent in parts, then the rest
    assert repr(mp.parallel_map(many.__getitem__, range(len(many)), backend="process", chunksize=len(many))) == repr(many)


class Worker:
    """What ``run_streaming`` needs of a worker's task, in this process, with a clock that moves only when items work."""

    def __init__(self, journal: JournalWriter) -> None:
        self._journal, self._id, self._state, self.now = journal, 7, RUNNING, 0.0
        self.sent: list[Any] = []

    def _send_partial(self, results: list[Any]) -> None:
        self.sent.extend(pickle.loads(pickle.dumps(results, protocol=5)))  # as the parent receives them

    def perf_counter(self) -> float:
        return self.now


def test_cheap_items_do_not_carry_a_chunk_on_a_worker_far_past_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # As on threads (test_map): the slices under a budget at most double what
    # the chunk ran, so the slow items after ten cheap ones stop it at item 16.
    fd = create_journal()
    writer = JournalWriter(fd)
    os.close(fd)
    worker = Worker(writer)
    monkeypatch.setattr(_process_chunks, "time", worker)

    def cheap_then_slow(x: int) -> int:
        worker.now += 1e-6 if x < 10 else 0.015
        return x

    assert worker.sent + run_streaming(worker, cheap_then_slow, range(100), 0, False, 0.02) == list(range(16))


def test_an_int_equal_to_the_journals_marker_reads_as_not_written() -> None:
    # The documented one-in-2**64 case: the reader stops one item early.
    fd = create_journal()
    writer, reader = JournalWriter(fd), JournalReader(fd)
    os.close(fd)
    try:
        marker = writer._marker
        writer.begin(7, 0)
        writer.ran_up_to(3)
        writer.extend(lambda i: marker if i == 1 else i, [0, 1, 2])
        assert reader.unsent(7, 0) == ([0], 3)
        assert writer.results() == [0, marker, 2]  # sent as it was, where no crash intervened
    finally:
        reader.close()


def test_each_item_of_a_pickled_list_is_read_alone_where_the_list_cannot_be_read_whole() -> None:
    # More than one batch of appends (pickle appends 1,000 at a time), an object two
    # items share, a buffer out of band after a culprit, and culprits that share
    # their rebuilding function in the memo: only the culprits fail.
    from makeparallel._serialization import Unreadable, dumps, loads, loads_each

    shared = ["shared"] * 3
    results: list[Any] = [(i, shared) if i % 3 else {"i": i} for i in range(2_500)]
    for culprit in (CULPRIT, 1_000, 2_499):
        results[culprit] = RebuiltAwayFrom(culprit, os.getpid())
    results[1_001] = bytearray(200_000)  # out of band
    data, buffers = dumps(results)
    assert buffers
    with pytest.raises(RuntimeError, match="cannot be rebuilt in the parent"):
        loads(data, buffers)
    read = loads_each(data, buffers)
    assert read is not None
    failed = [i for i, item in enumerate(read) if type(item) is Unreadable]
    assert failed == [CULPRIT, 1_000, 2_499]
    assert all(read[i] == results[i] for i in range(2_500) if i not in failed)
    assert read[1][1] is read[2][1]  # shared, as the whole list had it
    assert str(read[CULPRIT].error) == f"result {CULPRIT} cannot be rebuilt in the parent"
    assert loads_each(*dumps((1, 2))) is None  # no list


def test_an_item_that_refers_to_what_an_unreadable_one_would_have_made_fails_with_it() -> None:
    from makeparallel._serialization import Unreadable, dumps, loads_each

    culprit = RebuiltAwayFrom(0, os.getpid())
    read = loads_each(*dumps([[culprit], 1, [culprit], "after"]))  # the second refers to the first's memo entry
    assert read is not None
    assert [type(item) is Unreadable for item in read] == [True, False, True, False]
    assert read[1] == 1 and read[3] == "after"


class _Holder:
    """An object of this test module's, its state set after it is made (as ``BUILD`` does)."""

    def __init__(self, held: Any) -> None:
        self.held = held

    def __eq__(self, other: object) -> bool:
        return type(other) is _Holder and other.held == self.held


def test_an_item_that_refers_to_an_object_an_unreadable_one_had_begun_to_make_fails_with_it() -> None:
    # An object the failed item had memoized but not finished (a list, a dict, an
    # object whose state was being set, as deep as it goes) was handed out, part-made,
    # to each later item that refers to it, where the whole list would have failed.
    from makeparallel._serialization import Unreadable, dumps, loads_each

    culprit = RebuiltAwayFrom(0, os.getpid())
    in_a_list = [1, culprit, 2]
    in_a_dict = {"a": 1, "culprit": culprit}
    in_state = _Holder([culprit])
    deep = [[["deep", culprit]]]
    results = [in_a_list, "x", in_a_list, (3, in_a_list), in_a_dict, in_a_dict, in_state, in_state.held, in_state,
               deep, deep[0][0], "end"]  # fmt: skip
    read = loads_each(*dumps(results))
    assert read is not None
    failed = [i for i, item in enumerate(read) if type(item) is Unreadable]
    assert failed == [0, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert read[1] == "x" and read[11] == "end"


def test_what_an_unreadable_item_made_fails_the_items_that_share_it_but_what_is_whole_once_made() -> None:
    # Strings, numbers, bytes and what is found by name in a module (a class) bind no
    # items together: the later items that use those are read. An object the failed
    # item made (a tuple, a list, an enum member, a dict) fails the items that share
    # it, finished or not: no reading of its opcodes told the two apart without
    # handing out, silently, some part-made ones.
    from makeparallel._serialization import Unreadable, dumps, loads_each

    finished, shared = ("finished", [1, 2]), {"config": [1, 2]}
    results = [[finished, Colour.RED, shared, _Holder(1), "a text", 10**30, RebuiltAwayFrom(0, os.getpid())],
               finished, (Colour.RED, 1), shared, _Holder(2), "a text", 10**30, finished[1], "end"]  # fmt: skip
    read = loads_each(*dumps(results))
    assert read is not None
    assert [type(item) is Unreadable for item in read] == [True, True, True, True, False, False, False, True, False]
    assert read[4] == _Holder(2) and read[5] == "a text" and read[6] == 10**30 and read[8] == "end"


def test_an_unreadable_item_that_changed_what_an_earlier_item_made_fails_it_too() -> None:
    # Its unpickling ran code (a __setstate__) that put the item, part-made, into a list
    # an earlier item had made, then raised: read one by one, the earlier item, and each
    # that shares with it, came back holding an object whose state was never set. Items
    # that share objects are read, and fail, together; the others apart from them.
    from makeparallel._serialization import Unreadable, dumps, loads_each

    children: list[Any] = []
    elsewhere: list[Any] = ["apart"]
    joins = JoinsItsParentAwayFrom(children, os.getpid())
    results = [children, (elsewhere, "a text"), ("a text", joins), {"kids": children}, elsewhere]
    read = loads_each(*dumps(results))
    assert read is not None
    assert [type(item) is Unreadable for item in read] == [True, False, True, True, False]
    assert read[1] == (["apart"], "a text") and read[4] is read[1][0]  # shared, as the whole list had it
    assert str(read[0].error) == "it cannot be rebuilt in the parent"


def test_a_group_read_as_more_items_than_it_has_is_taken_for_no_items(monkeypatch: pytest.MonkeyPatch) -> None:
    # Were an item cut wrong (its opcodes pushing two objects), zipping a group's items
    # with what was read would hand one item's result to another: the chunk is not read
    # one by one then (None), and its items fail together, as they came.
    from makeparallel import _serialization
    from makeparallel._serialization import dumps, loads_each

    written = _serialization._written
    monkeypatch.setattr(_serialization, "_written", lambda parts, numbers: written(parts, numbers) + b"N")
    assert loads_each(*dumps([(1, "a"), RebuiltAwayFrom(0, os.getpid()), (2, "b")])) is None


class _RebuiltFrom:
    """An object of this test module's, rebuilt by a call with what it holds (``REDUCE``, not ``NEWOBJ``)."""

    def __init__(self, held: Any) -> None:
        self.held = held

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return _RebuiltFrom, (self.held,)


@pytest.mark.parametrize("how", ["tuple", "long tuple", "rebuilt"])
def test_an_item_the_pickler_made_then_threw_away_keeps_its_opcodes_and_the_next_its_own_buffer(how: str) -> None:
    # An object met again while what it holds is pickled (a tuple holding a list that
    # holds it; one rebuilt by a call whose argument leads back to it) is made, thrown
    # away (POP, POP_MARK) and fetched from the memo: its first opcodes leave nothing on
    # the stack. They were taken for the list's own: the item failed ("Memo value not
    # found"), and a buffer sent out of band among them counted for no item, so the next
    # item was handed that buffer, silently, in place of its own.
    from makeparallel._serialization import Unreadable, dumps, loads_each

    first, second = b"1" * 70_000, b"2" * 70_000  # out of band, each
    inner: list[Any] = []
    if how == "rebuilt":
        item: Any = _RebuiltFrom(None)
        item.held = _Holder((item, first))
    else:
        item = (inner, first) if how == "tuple" else (inner, 1, 2, 3, first)
        inner.append(item)
    data, buffers = dumps([item, second, RebuiltAwayFrom(0, os.getpid())])
    assert len(buffers) == 2
    read = loads_each(data, buffers)
    assert read is not None
    assert read[1] == second  # its own
    assert [type(each) is Unreadable for each in read] == [False, False, True]
    if how == "rebuilt":
        assert read[0].held.held[0] is read[0] and read[0].held.held[1] == first
    else:
        assert read[0][0][0] is read[0] and read[0][-1] == first


def test_a_function_whose_state_is_set_after_it_is_made_keeps_that_call_in_its_item() -> None:
    # A function sent by value is made, then its state set by a call whose result is
    # thrown away (cloudpickle's ``_function_setstate``: REDUCE, POP): that call is the
    # function's item's, not the next item's, which must not fail with it.
    from makeparallel._serialization import Unreadable, dumps, loads_each

    scale = 10

    def scaled(x: int) -> int:
        return x * scale

    read = loads_each(*dumps([scaled, RebuiltAwayFrom(1, os.getpid()), "after", scaled]))
    assert read is not None
    assert [type(item) is Unreadable for item in read] == [False, True, False, False]
    assert read[0](2) == 20 and read[2] == "after" and read[3] is read[0]


@pytest.mark.parametrize("how", ["alone", "cause and context", "group"])
def test_the_error_of_an_unreadable_item_keeps_none_of_the_chunks_results_alive(how: str) -> None:
    # Kept as the cause of what the map raises, its traceback held the frames that read
    # the chunk (the shared memo: every result): a chunk of 1 kB strings kept 245 MB.
    # So did the errors chained to it: an error raised from a cause while another was
    # handled (its context), the errors of an exception group.
    import gc
    import sys
    import weakref

    from makeparallel._serialization import Unreadable, dumps, loads_each

    if how == "group" and sys.version_info < (3, 11):
        pytest.skip("ExceptionGroup is Python 3.11's")
    if how == "alone":
        culprit, where = RebuiltAwayFrom(0, os.getpid()), "in _rebuilt_away_from"
    else:
        culprit, where = RebuiltWithErrorsAwayFrom(0, os.getpid(), how), "in _rebuilt_with_errors_away_from"
    read = loads_each(*dumps([_Holder(1), culprit, _Holder(2)]))
    assert read is not None and type(read[1]) is Unreadable
    error = read[1].error
    results = [weakref.ref(read[0]), weakref.ref(read[2])]
    del read
    gc.collect()
    assert [result() for result in results] == [None, None]
    assert where in error.__notes__[-1]  # still says where it failed


@pytest.mark.parametrize("how", ["frozen", "notes not a list"])
def test_an_unreadable_items_error_that_refuses_its_note_fails_only_that_item(how: str) -> None:
    # Its traceback was dropped, and its note added, by assigning them: an error whose
    # class refuses that (a frozen dataclass), or whose __notes__ is no list, raised
    # out of the reader, and the map lost the chunk's good results with it.
    from makeparallel._serialization import Unreadable, dumps, loads_each

    read = loads_each(*dumps([_Holder(1), RebuiltWithErrorsAwayFrom(0, os.getpid(), how), _Holder(2)]))
    assert read is not None and read[0] == _Holder(1) and read[2] == _Holder(2) and type(read[1]) is Unreadable
    error = read[1].error
    assert error.__traceback__ is None and (error.__cause__ is None or error.__cause__.__traceback__ is None)
    if how == "frozen":
        assert type(error) is FrozenError and "in _rebuilt_with_errors_away_from" in error.__notes__[-1]
    else:
        assert error.__notes__ is None  # left as it was


def test_a_function_whose_state_an_unreadable_item_had_yet_to_set_fails_with_it() -> None:
    # A function sent by value (a closure) is made first, then its state set by a call
    # whose result is thrown away (cloudpickle's ``_function_setstate``: REDUCE, POP):
    # no APPENDS nor BUILD changes it. Where its closure held the culprit, a later
    # result holding the same function got it with empty cells and no globals.
    from makeparallel._serialization import Unreadable, dumps, loads_each

    culprit, scale = RebuiltAwayFrom(0, os.getpid()), 10

    def scaled(x: int) -> tuple[int, Any]:
        return x * scale, culprit

    read = loads_each(*dumps([scaled, {"again": scaled}, "after"]))
    assert read is not None
    assert [type(item) is Unreadable for item in read] == [True, True, False]
    assert read[2] == "after"


def test_an_item_that_refers_to_what_an_unreadable_one_made_around_itself_fails_with_it() -> None:
    # A finished object may hold one that was not (a tuple of the list being made):
    # where the failed item refers back to what it had begun, what it made fails too.
    from makeparallel._serialization import Unreadable, dumps, loads_each

    outer: list[Any] = []
    around = (outer,)
    outer.extend([around, RebuiltAwayFrom(0, os.getpid())])
    read = loads_each(*dumps([outer, around, "after"]))
    assert read is not None
    assert [type(item) is Unreadable for item in read] == [True, True, False]
