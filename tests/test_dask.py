"""``backend="dask"`` on a real ``distributed.LocalCluster``: two worker processes on 127.0.0.1.

The cluster is started once for the module (a couple of seconds) and really
loses workers: a task kills its own worker process, and a client is closed
while its task runs. Cross-process signals are marker files (``Flags``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import logging
import os
import pickle
import re
import signal
import sys
import threading
import traceback
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import dask
import pytest
from dask.utils import key_split
from distributed import Client, LocalCluster
from distributed.scheduler import KilledWorker
from pool_helpers import CalledBack, Flags, wait_for_flag, wait_until

import makeparallel as mp
from makeparallel import _runtime
from makeparallel._backends import _base, _dask
from makeparallel.testing import wait_until_idle

pytestmark = pytest.mark.dask

# Threads the Dask client and cluster start by themselves (callbacks, offloading,
# nanny watchers of restarted workers, the profiler an in-process worker starts once
# per process); conftest does not count them as leaks.
ENGINE_THREAD_PREFIXES = ("Dask-", "AsyncProcess", "QueueFeederThread", "IO loop", "ThreadPoolExecutor", "Profile")


def square(x: int) -> int:
    return x * x


def fail(message: str) -> None:
    raise KeyError(message)


def token() -> str:
    return uuid.uuid4().hex


def set_flag(flags: Flags, name: str) -> None:
    flags.set(name)


def kill_own_worker() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


# The longest a nanny may take to bring back a killed worker (a fresh interpreter that imports
# Dask): on a loaded 2-core machine both of the cluster's took over 60 s.
WORKERS_RESTART = 180


def reports_progress() -> tuple[int | None, int]:
    mp.report_progress(0.5)
    mp.check_cancelled()
    return mp.get_current_task_id(), os.getpid()


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    # One retry after a worker dies (the default is 3): the crash test stays short.
    # One task per worker thread at a time (the default, 1.1, lets a worker take two
    # while another idles): a task submitted behind busy workers stays queued.
    config = {"distributed.scheduler.allowed-failures": 1, "distributed.scheduler.worker-saturation": 1.0}
    with dask.config.set(config):
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0"
        )
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module", autouse=True)
def client(cluster: LocalCluster) -> Iterator[Client]:
    client = Client(cluster, set_as_default=False)
    mp.configure(dask_client=client)
    try:
        yield client
    finally:
        _runtime._dask_client = None
        _runtime._backends.pop("dask", None)
        client.close()


@pytest.fixture
def flags(tmp_path: Any) -> Iterator[Flags]:
    flags = Flags(str(tmp_path))
    yield flags
    flags.set("release")  # whatever the test did, no task waits past its end


def test_results_come_from_the_workers() -> None:
    remote = mp.parallel(backend="dask")(os.getpid)
    assert remote().get(timeout=60) != os.getpid()
    assert mp.gather([mp.parallel(backend="dask")(square)(i) for i in range(5)], timeout=60) == [0, 1, 4, 9, 16]


async def square_on_the_worker(x: int) -> tuple[int, int]:
    import asyncio

    await asyncio.sleep(0)
    return x * x, os.getpid()


def test_an_async_def_function_runs_to_its_end_on_a_worker() -> None:
    # Its coroutine came back unrun: "cannot pickle 'coroutine' object".
    result, pid = mp.parallel(backend="dask")(square_on_the_worker)(7).get(timeout=60)
    assert result == 49 and pid != os.getpid()
    assert [r for r, _ in mp.parallel_map(square_on_the_worker, range(10), backend="dask")] == [x * x for x in range(10)]


def square_when_released(flags: Flags, x: int) -> int:
    assert flags.wait_for_release("go")
    return x * x


def test_a_call_over_its_limit_on_a_running_loop_returns_at_once(flags: Flags) -> None:
    # It waited for its slot on the loop's thread, which stalled the loop until a task ended.
    import asyncio

    limited = mp.parallel(backend="dask", max_concurrent=1)(square_when_released)

    async def main() -> list[Any]:
        handles = [limited(flags, n) for n in range(3)]
        assert [h.status for h in handles[1:]] == ["pending", "pending"]
        flags.set("go")
        return await mp.gather_async(handles, timeout=60)

    assert asyncio.run(main()) == [0, 1, 4]


def test_identical_calls_each_run_pure_false() -> None:
    remote = mp.parallel(backend="dask")(token)
    first, second = remote(), remote()
    assert first.get(timeout=60) != second.get(timeout=60)


def test_errors_keep_their_type_and_the_remote_traceback() -> None:
    handle = mp.parallel(backend="dask")(fail)("missing")
    handle.set_metadata("batch", 7)
    with pytest.raises(KeyError, match="missing") as caught:
        handle.get(timeout=60)
    frames = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert "fail" in frames  # the worker's frame, carried back by Dask
    assert any("'batch': 7" in note for note in getattr(caught.value, "__notes__", []))


def test_a_failed_task_whose_handle_is_dropped_is_freed_and_logs_its_unread_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The client keeps the error a Dask future failed with, whose traceback kept the frame that
    # fetched it, and that frame the task's future, whose callback holds the handle: a failure
    # dropped unread was kept until the client closed, and never logged.
    handle = mp.parallel(backend="dask")(fail)("missing")
    assert handle.wait(60)
    task_id = handle.get_task_id()
    ref = weakref.ref(handle)
    del handle

    def freed() -> bool:
        gc.collect()
        return ref() is None

    assert wait_until(freed, 30), "the failed task's handle is kept alive"
    told = [r.args for r in caplog.records if r.name == "makeparallel" and "never retrieved" in r.getMessage()]
    assert len([args for args in told if isinstance(args, tuple) and args[0] == task_id]) == 1


def returns_a_lock() -> threading.Lock:
    return threading.Lock()


def unfetched(handle: mp.AsyncHandle[Any]) -> str:
    """The start of the error of task ``handle``, whose result could not be fetched: it names the task."""
    return f"the result of task {handle.get_task_id()} ({handle.name}) could not be fetched from its Dask worker: "


def test_a_result_dask_cannot_serialize_fails_the_task() -> None:
    # The handle stayed pending for good: Dask's own executor never ended its future.
    handle = mp.parallel(backend="dask")(returns_a_lock)()
    with pytest.raises(mp.TaskSerializationError) as caught:
        handle.get(timeout=30)
    assert str(caught.value).startswith(unfetched(handle))  # it said "the result of a task", naming none
    assert handle.name == "returns_a_lock"
    assert "lock" in str(caught.value.__cause__)
    assert mp.parallel(backend="dask")(square)(5).get(timeout=60) == 25  # the cluster serves on


class Abort(BaseException):
    """A ``BaseException`` of the program's own: neither ``SystemExit`` nor ``KeyboardInterrupt``."""


class RaisesAsPickled:
    """A result whose pickling raises ``kind`` (a ``__reduce__`` that calls ``sys.exit()``, say)."""

    def __init__(self, kind: type[BaseException]) -> None:
        self.kind = kind

    def __reduce__(self) -> Any:
        raise self.kind("raised as the result was pickled")


def raise_as_unpickled(kind: type[BaseException]) -> None:
    raise kind("raised as the result was unpickled")


class RaisesAsUnpickled:
    """A result that pickles, and whose unpickling raises ``kind``."""

    def __init__(self, kind: type[BaseException]) -> None:
        self.kind = kind

    def __reduce__(self) -> Any:
        return raise_as_unpickled, (self.kind,)


def returns_unsendable(step: str, kind: type[BaseException]) -> Any:
    return (RaisesAsPickled if step == "pickled" else RaisesAsUnpickled)(kind)


def unsendable_at_13(item: tuple[str, type[BaseException], int]) -> Any:
    step, kind, x = item
    return returns_unsendable(step, kind) if x == 13 else x


UNSENDABLE = [(step, kind) for step in ("pickled", "unpickled") for kind in (SystemExit, KeyboardInterrupt, Abort, ValueError)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("step", "kind"), UNSENDABLE, ids=[f"{kind.__name__}-as-{step}" for step, kind in UNSENDABLE])
def test_a_result_whose_serialization_raises_fails_the_task(client: Client, step: str, kind: type[BaseException]) -> None:
    # Pickled: a SystemExit or KeyboardInterrupt killed the worker as it sent the result; the result
    # was lost with it, and the scheduler ran the task again on another worker without end (it
    # counts only deaths while a task runs against allowed-failures). Any other BaseException ended
    # the worker's reply: the fetch waited for good. Unpickled: a SystemExit stopped the client's
    # event loop (and the scheduler of a LocalCluster in this process).
    workers = client.run(os.getpid)
    handle = mp.parallel(backend="dask")(returns_unsendable)(step, kind)
    with pytest.raises(mp.TaskSerializationError) as caught:
        handle.get(timeout=60)
    assert str(caught.value).startswith(unfetched(handle))
    assert f"{kind.__name__}: raised as the result was {step}" in str(caught.value)
    if step == "pickled":
        assert "RaisesAsPickled" in str(caught.value)  # the result's class
    with pytest.raises(mp.TaskSerializationError, match=f"{kind.__name__}: raised as the result was {step}"):
        mp.parallel_map(unsendable_at_13, [(step, kind, x) for x in range(30)], backend="dask", chunksize=10)
    assert client.run(os.getpid) == workers  # no worker died of it
    assert mp.parallel(backend="dask")(square)(5).get(timeout=60) == 25  # the cluster serves on


@pytest.mark.parametrize("serializers", [("dask", "pickle"), ("pickle",)], ids=["dask", "pickle-only"])
def test_a_result_spilled_to_a_workers_disk_and_read_back_stays_guarded(serializers: tuple[str, ...]) -> None:
    # Read back as the bare value, it would meet Dask's pickling unguarded when sent.
    from distributed.protocol import deserialize_bytes, serialize_bytelist

    def spilled(value: Any) -> Any:
        return deserialize_bytes(b"".join(serialize_bytelist(_dask.SentResult(value), serializers=serializers)))

    read_back = spilled({"rows": [1, 2, 3]})
    assert isinstance(read_back, _dask.SentResult) and read_back.value == {"rows": [1, 2, 3]}
    assert read_back.failure is None
    failed = spilled(RaisesAsPickled(SystemExit))  # deserializing never raises: the failure is the result's
    assert isinstance(failed.failure, pickle.PicklingError)
    assert re.search("a RaisesAsPickled, could not be pickled.*SystemExit", str(failed.failure)), failed.failure
    again = deserialize_bytes(b"".join(serialize_bytelist(failed, serializers=serializers)))  # sent on again
    assert isinstance(again.failure, pickle.PicklingError) and str(again.failure) == str(failed.failure)


@pytest.mark.parametrize("serializers", [("dask", "pickle"), ("pickle",)], ids=["dask", "pickle-only"])
def test_a_list_sends_the_items_that_can_be_sent(serializers: tuple[str, ...]) -> None:
    from distributed.protocol import deserialize_bytes, serialize_bytelist

    sent = [1, threading.Lock(), 3, RaisesAsPickled(SystemExit)]
    unsent = deserialize_bytes(b"".join(serialize_bytelist(_dask.SentResult(sent), serializers=serializers))).failure
    assert isinstance(unsent, _dask.ItemsUnsent), unsent
    assert "2 of its items cannot be, item 1 the first: TypeError" in str(unsent)
    assert unsent.results == [1, None, 3, None]
    assert [(index, problem) for index, problem, _ in unsent.unsent] == [
        (1, "TypeError: cannot pickle '_thread.lock' object"),
        (3, "SystemExit: raised as the result was pickled"),
    ]


@pytest.mark.parametrize("serializers", [("dask", "pickle"), ("pickle",)], ids=["dask", "pickle-only"])
def test_a_list_whose_items_are_sent_apart_logs_no_error_per_item(
    serializers: tuple[str, ...], caplog: pytest.LogCaptureFixture
) -> None:
    # Dask's pickling logs each object it cannot pickle at ERROR, with its traceback and repr:
    # a map's chunk of 2,000 locks logged 2,000 of them on its worker, 146,000 lines.
    from distributed.protocol import deserialize_bytes, serialize_bytelist
    from distributed.protocol import pickle as dask_pickle

    with caplog.at_level(logging.ERROR, logger="distributed.protocol.pickle"):
        locks = _dask.SentResult([threading.Lock()] * 50)
        unsent = deserialize_bytes(b"".join(serialize_bytelist(locks, serializers=serializers))).failure
        assert isinstance(unsent, _dask.ItemsUnsent) and "50 of its items cannot be" in str(unsent), unsent
        assert len(caplog.records) <= 1  # Dask's own, of the list as a whole
        caplog.clear()
        with pytest.raises(TypeError):
            dask_pickle.dumps(threading.Lock())
        assert len(caplog.records) == 1  # what is pickled otherwise still logs as it did


def returns_kept_types() -> dict[str, Any]:
    import numpy as np

    frozen = np.arange(5)
    frozen.flags.writeable = False
    return {"view": memoryview(b"abc"), "frozen": frozen, "array": np.arange(3)}


def kept_type_or_none(name: str) -> Any:
    return None if name == "none" else returns_kept_types()[name]


def returns_a_memoryview(size: int) -> memoryview:
    return memoryview(bytearray(size))


def test_results_arrive_as_dask_serializes_them() -> None:
    # Pickled whole by the library, a memoryview came back as bytes and a read-only array as writeable.
    assert type(mp.parallel(backend="dask")(returns_a_memoryview)(3).get(timeout=60)) is memoryview
    assert [type(view) for view in mp.parallel_map(returns_a_memoryview, [1, 2], backend="dask")] == [memoryview] * 2
    kept = mp.parallel(backend="dask")(returns_kept_types)().get(timeout=60)
    assert type(kept["view"]) is memoryview and bytes(kept["view"]) == b"abc"
    assert not kept["frozen"].flags.writeable and kept["frozen"].tolist() == [0, 1, 2, 3, 4]
    assert kept["array"].flags.writeable and kept["array"].tolist() == [0, 1, 2]
    # One chunk whose first result Dask would pickle: the items after it keep their types all the same.
    chunk = mp.parallel_map(kept_type_or_none, ["none", "view", "frozen"], backend="dask", chunksize=3)
    assert chunk[0] is None and type(chunk[1]) is memoryview and not chunk[2].flags.writeable


def test_a_large_result_is_sent_without_a_copy() -> None:
    # A client fetches through the scheduler at pickle protocol 4: pickled whole, an array's
    # data was copied into the pickle on the worker and out of it here (400 MB: 0.4 s became 2 s).
    import numpy as np
    from distributed.protocol import serialize

    array = np.arange(1_000_000)
    _, frames = serialize(_dask.SentResult(array), context={"pickle-protocol": 4})
    assert any(np.shares_memory(np.frombuffer(frame, dtype=np.uint8), array) for frame in frames)


class HoldsALock(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def fail_with_a_lock(message: str) -> None:
    raise HoldsALock(message)


def test_an_error_dask_cannot_serialize_keeps_its_class() -> None:
    # It arrived as a bare Exception with its text.
    with pytest.raises(HoldsALock, match="locked out") as caught:
        mp.parallel(backend="dask")(fail_with_a_lock)("locked out").get(timeout=60)
    assert "in fail_with_a_lock" in str(caught.value.__cause__)  # the worker's traceback, as text


def raise_base_exception(kind: type[BaseException]) -> None:
    raise kind("raised by the task")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", [SystemExit, KeyboardInterrupt], ids=lambda kind: kind.__name__)
def test_a_base_exception_the_task_raises_arrives_as_itself(kind: type[BaseException]) -> None:
    # Dask's worker died of it, as many times as the scheduler allows: WorkerCrashedError, its workers restarted.
    with pytest.raises(kind, match="raised by the task") as caught:
        mp.parallel(backend="dask")(raise_base_exception)(kind).get(timeout=30)
    assert "in raise_base_exception" in str(caught.value.__cause__)  # the worker's traceback, as text


class CannotSayItself(Exception):
    def __str__(self) -> str:
        raise ValueError("no words")


def fail_unsayably() -> None:
    raise CannotSayItself("raised by the task")


def test_an_error_whose_str_raises_keeps_its_class() -> None:
    # Dask's worker describes the error with str() as it sends it: the task failed with that ValueError instead.
    with pytest.raises(CannotSayItself) as caught:
        mp.parallel(backend="dask")(fail_unsayably)().get(timeout=60)
    assert caught.value.args == ("raised by the task",)


@dataclasses.dataclass(frozen=True)
class FrozenWithoutState(Exception):
    """Without fields, pickle alone rebuilds it; Dask's pickling (tblib's) sets its chain through __setattr__, which refuses."""


@dataclasses.dataclass(frozen=True)
class FrozenCause(Exception):
    pass


def fail_frozen() -> None:
    raise FrozenWithoutState()


def fail_caused_by_a_frozen_error() -> None:
    raise ValueError("outer") from FrozenCause()


def test_an_error_that_refuses_its_chain_arrives_as_itself() -> None:
    # Dask pickles an error with tblib, whose unpickling sets __cause__ and __context__
    # through the class's own __setattr__; a frozen dataclass's refuses them, and Dask sent
    # a bare Exception with its repr() in place of the error, and of the error it caused.
    with pytest.raises(FrozenWithoutState) as caught:
        mp.parallel(backend="dask")(fail_frozen)().get(timeout=60)
    assert "in fail_frozen" in str(caught.value.__cause__)  # the worker's traceback, as text
    with pytest.raises(ValueError, match="outer") as caught_outer:
        mp.parallel(backend="dask")(fail_caused_by_a_frozen_error)().get(timeout=60)
    assert type(caught_outer.value.__cause__) is FrozenCause


def fail_with_a_lock_on_13(x: int) -> int:
    if x == 13:
        raise HoldsALock(f"item {x}")
    return x


def test_a_map_that_goes_on_past_an_error_dask_cannot_serialize() -> None:
    # The chunk's results held the error: Dask could not send them back, and the whole map failed.
    results = mp.parallel_map(fail_with_a_lock_on_13, range(30), backend="dask", chunksize=10, on_error="skip")
    assert results == [x for x in range(30) if x != 13]


def unsendable_at_5(kind: str, x: int) -> Any:
    if x != 5 and kind != "every":
        return x
    return RaisesAsPickled(SystemExit) if kind == "reduce" else threading.Lock()


UNSENDABLE_RESULTS = {"lock": "TypeError: cannot pickle '_thread.lock' object", "reduce": "SystemExit: raised as the result was pickled"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", list(UNSENDABLE_RESULTS))
def test_a_map_loses_only_the_item_whose_result_dask_cannot_serialize(kind: str) -> None:
    # The chunk's results travel together: one that could not be serialized failed the whole map,
    # whatever on_error said. The process backend fails only that item.
    fn = functools.partial(unsendable_at_5, kind)
    assert mp.parallel_map(fn, range(10), backend="dask", chunksize=10, on_error="skip") == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert mp.parallel_map(fn, range(10), backend="dask", chunksize=10, on_error="none") == [0, 1, 2, 3, 4, None, 6, 7, 8, 9]
    assert mp.parallel_map(fn, [5], backend="dask", on_error="none") == [None]  # a map of one item
    handed_out: list[Any] = []
    with pytest.raises(mp.TaskSerializationError) as caught:
        handed_out.extend(mp.imap(fn, range(10), backend="dask", chunksize=10))  # keeps those it got before the error
    assert handed_out == [0, 1, 2, 3, 4]  # those before it, as the process backend hands them out
    assert str(caught.value).startswith(
        f"the result of item 5 (5) could not be pickled to send it back from its Dask worker: {UNSENDABLE_RESULTS[kind]}"
    )
    assert "Return picklable data, or use backend='thread'" in str(caught.value)
    if kind == "reduce":
        assert "in __reduce__" in str(caught.value.__cause__)  # the worker's traceback, as text
    import asyncio

    async def unordered() -> list[Any]:
        return [result async for result in mp.imap(fn, range(10), backend="dask", chunksize=5, ordered=False, on_error="none")]

    assert sorted(asyncio.run(unordered()), key=str) == sorted([0, 1, 2, 3, 4, None, 6, 7, 8, 9], key=str)


@pytest.mark.timeout(120)
def test_a_map_chunk_of_which_no_result_dask_can_serialize() -> None:
    fn = functools.partial(unsendable_at_5, "every")
    assert mp.parallel_map(fn, range(4), backend="dask", chunksize=4, on_error="skip") == []
    assert mp.parallel_map(fn, range(4), backend="dask", chunksize=4, on_error="none") == [None] * 4
    with pytest.raises(mp.TaskSerializationError, match=r"^the result of item 0 \(0\) could not be pickled"):
        mp.parallel_map(fn, range(4), backend="dask", chunksize=4)


def returns_a_list_with_a_lock() -> list[Any]:
    return [1, threading.Lock(), 3]


def waits_for_a_list_with_a_lock(x: int) -> list[Any]:
    return mp.parallel(backend="dask")(returns_a_list_with_a_lock)().get(timeout=60)


def test_a_tasks_own_list_that_cannot_be_sent_names_a_public_error() -> None:
    # Its message named ItemsUnsent, a class of the Dask backend's internals, where it said PicklingError.
    handle = mp.parallel(backend="dask")(returns_a_list_with_a_lock)()
    with pytest.raises(mp.TaskSerializationError) as caught:
        handle.get(timeout=60)
    assert str(caught.value).startswith(
        f"{unfetched(handle)}PicklingError: the task's result, a list, could not be pickled on its Dask "
        "worker: item 1 of it cannot be: TypeError: cannot pickle '_thread.lock' object."
    )
    assert isinstance(caught.value.__cause__, pickle.PicklingError)


def test_a_map_item_that_waits_for_such_a_task_fails_with_its_error() -> None:
    # The task's error, marked with what its worker sent, was taken for the chunk's own: the map
    # raised "the result of item 1 ..." or gave the task's results as the chunk's.
    with pytest.raises(mp.TaskSerializationError, match="could not be fetched from its Dask worker"):
        mp.parallel_map(waits_for_a_list_with_a_lock, range(2), backend="thread")
    assert mp.parallel_map(waits_for_a_list_with_a_lock, range(2), backend="thread", on_error="none") == [None, None]


def test_a_task_whose_list_result_holds_an_item_dask_cannot_serialize_fails() -> None:
    # Only a map's chunk goes on without the items that cannot be sent: a task's own list fails whole.
    with pytest.raises(mp.TaskSerializationError, match="could not be fetched from its Dask worker.*item 1 of it.*lock"):
        mp.parallel(backend="dask")(returns_a_list_with_a_lock)().get(timeout=60)


@pytest.mark.parametrize("fn", [square, lambda x: x * x], ids=["function", "lambda"])
def test_maps_run_as_chunked_futures(fn: Any) -> None:
    assert mp.parallel_map(fn, range(100), backend="dask") == [x * x for x in range(100)]
    assert sorted(mp.imap(fn, range(30), backend="dask", ordered=False, chunksize=4)) == [x * x for x in range(30)]


def test_a_dask_client_given_as_the_backend_says_how_to_use_it(client: Client) -> None:
    # A Client is no Executor: the error listed the backend names, and left the user to guess.
    advice = r"for a Dask client, pass backend='dask' and makeparallel.configure\(dask_client=client\)"
    with pytest.raises(TypeError, match=advice):
        mp.parallel(backend=client)(square)
    with pytest.raises(TypeError, match=advice):
        mp.parallel_map(square, range(3), backend=client)


def negate(x: int) -> int:
    return -x


@pytest.mark.timeout(120)
@pytest.mark.parametrize("over", [range, lambda n: iter(range(n))], ids=["a range", "a generator"])
def test_an_imap_of_cheap_items_runs_them_in_chunks_of_many(over: Callable[[int], Any]) -> None:
    # Its chunks shrank to one item each: a chunk's time counted from its submission, and a Dask
    # task's round trip and its wait behind the chunks in flight before it (milliseconds, more
    # than the 10 ms a chunk aims at) were taken for its items' work. 2,000 items took 7 s.
    before = mp.get_metrics("negate [map]")
    assert list(mp.imap(negate, over(2000), backend="dask")) == [-x for x in range(2000)]
    after = mp.get_metrics("negate [map]")
    assert after is not None
    chunks = after.total_tasks - (before.total_tasks if before is not None else 0)
    assert chunks <= 200  # an item is under a millisecond of work: chunks of hundreds


def test_metrics_callbacks_and_progress_stay_here() -> None:
    done: list[Any] = []
    handle = mp.parallel(backend="dask", name="dask_progress")(reports_progress)()
    handle.on_complete(done.append)
    task_id, pid = handle.get(timeout=60)
    assert task_id is None and pid != os.getpid()  # no task context crosses to the worker
    assert handle.get_progress() == 1.0 and done == [(None, pid)]
    metrics = mp.get_metrics("dask_progress")
    assert metrics is not None and metrics.completed_tasks == 1


@pytest.mark.timeout(120)
def test_an_asynchronous_client_takes_tasks_from_its_own_event_loop(cluster: LocalCluster, client: Client) -> None:
    # Sent from a coroutine on the loop of an asynchronous client, the first task failed with
    # "AttributeError: 'coroutine' object has no attribute 'values'": the workers' threads
    # were counted with client.nthreads(), which on that loop returns its coroutine unrun.
    remote = mp.parallel(backend="dask")

    async def main() -> tuple[int, list[int], int]:
        async with Client(cluster.scheduler_address, asynchronous=True, set_as_default=False) as own:
            mp.configure(dask_client=own)
            try:
                one = await remote(square)(3)
                many = await mp.gather_async([remote(square)(x) for x in range(4)])
                return one, many, mp.health(memory_limit_percent=100.0)["pools"]["dask"]["num_workers"]
            finally:
                mp.configure(dask_client=client)

    assert asyncio.run(main()) == (9, [0, 1, 4, 9], 2)
    assert remote(square)(4).get(timeout=60) == 16  # the module's client again


async def until(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    """:func:`wait_until` in a coroutine: polls without blocking the event loop it runs on."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def refused_on_an_asynchronous_clients_loop(
    cluster: LocalCluster, client: Client, flags: Flags, wait: Callable[[mp.AsyncHandle[str]], object]
) -> str:
    """The ``RuntimeError`` of ``wait(later)`` in a coroutine of an asynchronous client, ``later`` a task of it.

    The task then ends and is awaited, and another runs (nothing was shut
    down); ``client`` is the configured one again after.
    """
    remote = mp.parallel(backend="dask")

    async def main() -> str:
        async with Client(cluster.scheduler_address, asynchronous=True, set_as_default=False) as own:
            mp.configure(dask_client=own)
            try:
                later = remote(wait_for_flag)(flags, "later")
                try:
                    with pytest.raises(RuntimeError) as refused:
                        wait(later)
                finally:
                    flags.set("later")
                assert await later == "later"
                assert await remote(square)(3) == 9  # nothing was shut down
                return str(refused.value)
            finally:
                mp.configure(dask_client=client)

    return asyncio.run(main())


@pytest.mark.timeout(120)
def test_a_blocking_wait_on_an_asynchronous_clients_loop_says_to_await(cluster: LocalCluster, client: Client, flags: Flags) -> None:
    # Refused, it said to "submit the follow-up work from the callback and return, or wait
    # from another thread": there is no callback in a coroutine, and the loop is the
    # program's own, where the way to wait is to await.
    message = refused_on_an_asynchronous_clients_loop(cluster, client, flags, lambda later: later.get(timeout=10))
    assert "event loop of its asynchronous Dask client" in message, message
    assert "`await handle`" in message and "mp.gather_async" in message, message


@pytest.mark.timeout(120)
@pytest.mark.parametrize("call", ["shutdown(timeout_secs=None)", "wait_until_idle(timeout=None)"])
def test_a_wait_for_every_task_on_an_asynchronous_clients_loop_says_to_await(
    cluster: LocalCluster, client: Client, flags: Flags, call: str
) -> None:
    # Refused there, it said it was "called in a Dask task's callback" and to "call it from
    # your program's own thread": in a coroutine that thread is this one, the loop's.
    wait_for_every_task = {
        "shutdown(timeout_secs=None)": lambda _: mp.shutdown(timeout_secs=None),
        "wait_until_idle(timeout=None)": lambda _: wait_until_idle(timeout=None),
    }[call]
    message = refused_on_an_asynchronous_clients_loop(cluster, client, flags, wait_for_every_task)
    assert message.startswith(f"{call} called on the event loop of an asynchronous Dask client"), message
    assert "your program's own thread" not in message, message
    assert "`await handle`" in message and "asyncio.to_thread" in message, message


# The waits for a task (``later``, one of ``group``'s) that a callback may make.
WAITS_FOR_LATER: dict[str, Callable[[mp.AsyncHandle[Any], mp.ParallelContext], object]] = {
    "get": lambda later, _: later.get(timeout=10),
    "get without a timeout": lambda later, _: later.get(),
    "result": lambda later, _: later.result(10),
    "wait": lambda later, _: later.wait(10),
    "exception": lambda later, _: later.exception(10),
    "gather": lambda later, _: mp.gather([later], timeout=10),
    "mp.wait": lambda later, _: mp.wait([later], timeout=10),
    "as_completed": lambda later, _: list(mp.as_completed([later], timeout=10)),
    "ctx.results": lambda _, group: group.results(),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("wait", list(WAITS_FOR_LATER))
def test_a_wait_for_a_dask_task_in_a_dask_tasks_callback_raises_at_once(wait: str, flags: Flags) -> None:
    # The callback runs on the Dask client's event loop thread, which fetches the result
    # the wait is for: it waited out its whole timeout, then said the task was "still
    # running" though it may have ended long before; without a timeout, for good.
    remote = mp.parallel(backend="dask")
    with mp.ParallelContext(backend="dask") as group:
        later = group.submit(wait_for_flag, flags, "later")
        wait_for_it = CalledBack(lambda: WAITS_FOR_LATER[wait](later, group))
        try:
            remote(wait_for_flag)(flags, "first").add_done_callback(wait_for_it)  # registered before its end
            flags.set("first")
            assert wait_for_it.called.wait(60), f"{wait} in the callback waited for good"
        finally:
            flags.set("later")
    error = wait_for_it.outcome
    assert isinstance(error, RuntimeError), error
    message = str(error)
    assert "event loop thread of its Dask client" in message and f"task {later.get_task_id()} " in message
    assert "pool" not in message and "worker process" not in message  # the process backend's words
    assert later.get(timeout=60) == "later"


@pytest.mark.timeout(120)
def test_a_callback_may_not_wait_on_the_loop_of_the_client_that_runs_the_task_waited_for(
    cluster: LocalCluster, client: Client, flags: Flags
) -> None:
    # Clients differ by submission (configure(dask_client=...)): the wait is refused on the
    # event loop thread of the client the awaited task was sent to, whichever is in use now,
    # and allowed on another client's, whose loop the task's result does not need.
    second = Client(cluster.scheduler_address, set_as_default=False)  # an event loop thread of its own
    assert second.loop is not client.loop
    remote = mp.parallel(backend="dask")
    try:
        later = remote(wait_for_flag)(flags, "later")  # its result comes through the first client
        refused = CalledBack(lambda: later.get(timeout=10))
        remote(wait_for_flag)(flags, "first").add_done_callback(refused)
        # Both on the workers before the next, which the second client may send to the scheduler first.
        assert wait_until(lambda: len(processing(cluster)) == 2, 30)
        mp.configure(dask_client=second)

        def release_it_and_wait() -> object:
            flags.set("later")
            return later.get(timeout=60)

        waited = CalledBack(release_it_and_wait)
        remote(wait_for_flag)(flags, "other").add_done_callback(waited)  # its callback runs on the second's loop
        flags.set("first")
        assert refused.called.wait(60), "get() in the callback waited out its timeout"
        flags.set("other")
        assert waited.called.wait(90)
    finally:
        for name in ("first", "later", "other"):
            flags.set(name)
        mp.configure(dask_client=client)
    try:
        assert isinstance(refused.outcome, RuntimeError), refused.outcome
        assert f"task {later.get_task_id()} " in str(refused.outcome)
        assert waited.outcome == "later"
    finally:
        second.close()


@pytest.mark.timeout(120)
def test_shutdown_without_a_timeout_in_a_dask_tasks_callback_is_refused(flags: Flags) -> None:
    # On the client's event loop thread, it waited for good for the tasks whose results that thread fetches.
    remote = mp.parallel(backend="dask")
    later = remote(wait_for_flag)(flags, "later")
    shut_down_here = CalledBack(lambda: mp.shutdown(timeout_secs=None))
    try:
        remote(wait_for_flag)(flags, "first").add_done_callback(shut_down_here)
        flags.set("first")
        assert shut_down_here.called.wait(60), "shutdown() in the callback waited for good"
    finally:
        flags.set("later")
    error = shut_down_here.outcome
    assert isinstance(error, RuntimeError), error
    assert "in a Dask task's callback, on its client's event loop thread" in str(error)
    assert "nothing was shut down" in str(error)
    assert later.get(timeout=60) == "later"
    assert remote(square)(3).get(timeout=60) == 9  # nothing was shut down


def processing(cluster: LocalCluster) -> list[str]:
    """The keys the scheduler has running on workers (read from its own process)."""
    return [key for key, task in list(cluster.scheduler.tasks.items()) if task.state == "processing"]


def test_cancel_a_queued_task_cancels_its_dask_future(cluster: LocalCluster, client: Client, flags: Flags) -> None:
    remote = mp.parallel(backend="dask")
    held = [remote(wait_for_flag)(flags, "release") for _ in range(2)]  # one per worker thread
    assert wait_until(lambda: len(processing(cluster)) == 2, 30)
    known = set(cluster.scheduler.tasks)
    queued = remote(set_flag)(flags, "ran")
    # The scheduler takes a new graph asynchronously, so a cancel sent at once can
    # reach it first (documented): cancel once the scheduler holds the task for us.
    assert wait_until(lambda: any(cluster.scheduler.tasks[k].who_wants for k in new_keys(cluster, known)), 30)
    (key,) = new_keys(cluster, known)
    assert queued.cancel() is True
    with pytest.raises(mp.TaskCancelledError):
        queued.get()
    # Dask cancels asynchronously: release the workers once they dropped the task.
    assert wait_until(lambda: not held_anywhere(cluster, client, key), 30)
    flags.set("release")
    assert mp.gather(held, timeout=60) == ["release", "release"]
    assert not flags.is_set("ran")


@pytest.mark.timeout(120)
def test_a_cancel_in_a_dask_tasks_callback_cancels_the_dask_future(cluster: LocalCluster, flags: Flags) -> None:
    # The callback runs on the client's event loop thread, where Dask's cancel returns its
    # coroutine unrun: the handle ended cancelled, and Dask never heard of it (the scheduler
    # kept the task, which ran on; "coroutine 'Client._cancel' was never awaited").
    remote = mp.parallel(backend="dask")
    first = remote(wait_for_flag)(flags, "first")
    other = remote(wait_for_flag)(flags, "release")  # one per worker thread
    assert wait_until(lambda: len(processing(cluster)) == 2, 30)
    known = set(cluster.scheduler.tasks)
    queued = remote(wait_for_flag)(flags, "queued")
    # Cancelled once the scheduler holds it (a cancel sent at once can reach it first, documented).
    assert wait_until(lambda: any(cluster.scheduler.tasks[k].who_wants for k in new_keys(cluster, known)), 30)
    (key,) = new_keys(cluster, known)
    cancel_it = CalledBack(queued.cancel)
    try:
        first.add_done_callback(cancel_it)  # registered before its end
        flags.set("first")
        assert cancel_it.called.wait(60)
        assert cancel_it.outcome is True
        assert queued.status == "cancelled"
        # Dask cancels asynchronously: the scheduler forgets the task once the cancel reaches it.
        assert wait_until(lambda: key not in cluster.scheduler.tasks, 30), "the cancel never reached Dask"
    finally:
        flags.set("queued")
        flags.set("release")
    assert other.get(timeout=60) == "release"


def test_a_task_is_keyed_on_the_cluster_by_its_name(cluster: LocalCluster, flags: Flags) -> None:
    # Every task was keyed "call_remotely-<uuid>", after the library's runner: Dask's dashboard
    # (task stream, progress bars) and its logs named no function of the program.
    known = set(cluster.scheduler.tasks)
    handles = [
        mp.parallel(backend="dask")(wait_for_flag)(flags, "release"),
        mp.parallel(backend="dask", name="resize ✓")(wait_for_flag)(flags, "release"),
    ]
    try:
        assert wait_until(lambda: len(new_keys(cluster, known)) == 2, 30)
        assert sorted(key_split(key) for key in new_keys(cluster, known)) == ["resize ✓", "wait_for_flag"]
    finally:
        flags.set("release")
    assert mp.gather(handles, timeout=60) == ["release", "release"]


def test_a_task_whose_name_holds_a_lone_surrogate_is_keyed_with_its_escape(
    cluster: LocalCluster, client: Client, flags: Flags
) -> None:
    # The key, no UTF-8, failed to encode as the client sent the task: the client's connection to
    # its scheduler broke, and every task of the client in flight ended cancelled.
    own = Client(cluster, set_as_default=False)  # the module's client is not the one broken
    mp.configure(dask_client=own)
    known = set(cluster.scheduler.tasks)
    try:
        other = mp.parallel(backend="dask")(wait_for_flag)(flags, "release")
        assert wait_until(lambda: len(new_keys(cluster, known)) == 1, 30)
        named = mp.parallel(backend="dask", name="report \udcff.csv")(wait_for_flag)(flags, "release")
        try:
            assert wait_until(lambda: len(new_keys(cluster, known)) == 2, 30)
            assert sorted(key_split(key) for key in new_keys(cluster, known)) == ["report \\udcff.csv", "wait_for_flag"]
        finally:
            flags.set("release")
        assert mp.gather([other, named], timeout=60) == ["release", "release"]
    finally:
        mp.configure(dask_client=client)
        own.close()


def new_keys(cluster: LocalCluster, known: set[Any]) -> list[Any]:
    return [key for key in list(cluster.scheduler.tasks) if key not in known]


def held_anywhere(cluster: LocalCluster, client: Client, key: Any) -> bool:
    """Whether the scheduler or a worker still holds task ``key``."""
    on_workers = client.run(lambda dask_worker: key in dask_worker.state.tasks)
    return key in cluster.scheduler.tasks or any(on_workers.values())


def executing(client: Client) -> list[Any]:
    """The keys whose calls the workers' threads run now."""
    return [key for stacks in client.call_stack().values() for key in stacks]


@pytest.mark.timeout(120)
def test_shutdown_cancelling_pending_tasks_leaves_the_running_ones_running(
    cluster: LocalCluster, client: Client, flags: Flags
) -> None:
    # It cancelled the Dask futures of the running tasks too: their handles ended cancelled while
    # their calls ran on, where the thread and process backends cancel only tasks not started.
    remote = mp.parallel(backend="dask")
    running = [remote(wait_for_flag)(flags, "release") for _ in range(2)]  # one per worker thread
    assert wait_until(lambda: len(executing(client)) == 2, 30)
    known = set(cluster.scheduler.tasks)
    queued = remote(set_flag)(flags, "ran")
    assert wait_until(lambda: any(cluster.scheduler.tasks[k].who_wants for k in new_keys(cluster, known)), 30)
    (key,) = new_keys(cluster, known)
    assert mp.shutdown(timeout_secs=0, cancel_pending=True) is False
    with pytest.raises(mp.TaskCancelledError) as caught:
        queued.get(timeout=60)
    # The program's cancel, not one by "its executor <Dask executor of ...>", a client nobody closed.
    assert str(caught.value) == f"task {queued.get_task_id()} (set_flag) was cancelled"
    assert [handle.status for handle in running] == ["running", "running"]
    assert wait_until(lambda: not held_anywhere(cluster, client, key), 30)
    flags.set("release")
    assert mp.gather(running, timeout=60) == ["release", "release"]
    assert not flags.is_set("ran")


@pytest.mark.timeout(120)
def test_shutdown_cancelling_pending_tasks_in_a_coroutine_of_an_asynchronous_client_cancels_them(
    cluster: LocalCluster, client: Client, flags: Flags
) -> None:
    # On the client's own loop the question which tasks run was not asked (its answer
    # needs that loop), and none was cancelled: the program's coroutines, where an
    # asynchronous client is used, could not cancel its pending tasks at all.
    remote = mp.parallel(backend="dask")

    async def main() -> None:
        async with Client(cluster.scheduler_address, asynchronous=True, set_as_default=False) as own:
            mp.configure(dask_client=own)
            try:
                running = [remote(wait_for_flag)(flags, "release") for _ in range(2)]  # one per worker thread
                assert await until(lambda: len(processing(cluster)) == 2)
                known = set(cluster.scheduler.tasks)
                queued = remote(set_flag)(flags, "ran")
                assert await until(lambda: any(cluster.scheduler.tasks[k].who_wants for k in new_keys(cluster, known)))
                (key,) = new_keys(cluster, known)
                try:
                    assert mp.shutdown(timeout_secs=0, cancel_pending=True) is False  # the cancels come as it awaits
                    assert await until(queued.is_ready), "the pending task was not cancelled"
                    with pytest.raises(mp.TaskCancelledError):
                        await queued
                    assert [handle.status for handle in running] == ["running", "running"]
                    assert await until(lambda: not held_anywhere(cluster, client, key))  # Dask cancels asynchronously
                finally:
                    flags.set("release")
                assert await mp.gather_async(running) == ["release", "release"]
            finally:
                mp.configure(dask_client=client)

    asyncio.run(main())
    assert not flags.is_set("ran")


@pytest.mark.timeout(120)
def test_shutdown_cancels_no_task_where_dask_cannot_say_which_run(
    client: Client, flags: Flags, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cancelling them all, the running ones with the rest, would break the documented meaning.
    async def no_answer(client: Client, keys: list[Any]) -> set[Any]:
        raise OSError("the scheduler did not answer")

    monkeypatch.setattr(_dask, "_unfinished_keys", no_answer)
    remote = mp.parallel(backend="dask")
    running = [remote(wait_for_flag)(flags, "release") for _ in range(2)]  # one per worker thread
    assert wait_until(lambda: len(executing(client)) == 2, 30)
    queued = remote(square)(3)
    assert mp.shutdown(timeout_secs=0, cancel_pending=True) is False
    assert [handle.status for handle in (*running, queued)] == ["running"] * 3
    flags.set("release")
    assert mp.gather([*running, queued], timeout=60) == ["release", "release", 9]


@pytest.mark.timeout(180)
def test_shutdown_cancelling_pending_tasks_in_a_dask_tasks_callback_does_not_hold_up_the_loop(
    client: Client, flags: Flags, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Asked on the client's event loop thread, the question which tasks run waited its whole
    # STARTED_QUERY_TIMEOUT for an answer that only that loop could bring, holding up every
    # result of the client meanwhile, then cancelled none all the same. The question goes to
    # the loop, asked once the callback returns: by then the worker that ``first`` freed may
    # have started ``queued`` (then it runs to its end), or not (then it is cancelled).
    monkeypatch.setattr(_dask, "STARTED_QUERY_TIMEOUT", 100.0)  # longer than the test waits
    asked = threading.Event()
    real = _dask._cancel_not_started

    async def cancel_not_started(*args: Any) -> None:
        await real(*args)
        asked.set()

    monkeypatch.setattr(_dask, "_cancel_not_started", cancel_not_started)
    remote = mp.parallel(backend="dask")
    first = remote(wait_for_flag)(flags, "first")
    running = remote(wait_for_flag)(flags, "release")  # one per worker thread
    assert wait_until(lambda: len(executing(client)) == 2, 30)
    queued = remote(square)(3)
    shut_down_here = CalledBack(lambda: mp.shutdown(timeout_secs=0, cancel_pending=True))
    try:
        first.add_done_callback(shut_down_here)  # registered before its end
        flags.set("first")
        assert shut_down_here.called.wait(60), "the shutdown held up the client's event loop"
        # Released only once answered: a call that ends as Dask is asked may be cancelled (documented).
        assert asked.wait(60)
    finally:
        flags.set("release")
    assert shut_down_here.outcome is False
    assert running.get(timeout=60) == "release"
    assert queued.wait(60)
    assert queued.status in ("succeeded", "cancelled"), queued.status
    if queued.status == "succeeded":
        assert queued.get() == 9


def test_tasks_sent_beyond_the_cluster_threads_count_as_queued(cluster: LocalCluster, flags: Flags) -> None:
    # The info had no queued_tasks: health() said ok however many tasks waited behind busy workers.
    remote = mp.parallel(backend="dask")
    held = [remote(wait_for_flag)(flags, "release") for _ in range(2)]  # one per worker thread
    try:
        assert wait_until(lambda: len(processing(cluster)) == 2, 30)
        queued = [remote(square)(x) for x in range(3)]
        report = mp.health(memory_limit_percent=100.0, queue_limit=2)
        assert report["pools"]["dask"]["num_workers"] == 2
        assert report["pools"]["dask"]["queued_tasks"] == 3
        assert "dask pool saturated: 3 tasks queued for 2 workers (limit 2)" in report["reasons"]
    finally:
        flags.set("release")
    assert mp.gather([*held, *queued], timeout=60) == ["release", "release", 0, 1, 4]
    assert mp.health()["pools"]["dask"]["queued_tasks"] == 0


def test_a_timeout_cancels_the_dask_future(cluster: LocalCluster, flags: Flags) -> None:
    handle = mp.parallel(backend="dask", timeout=0.5)(wait_for_flag)(flags, "release")
    with pytest.raises(mp.TaskTimeoutError, match="Dask future was cancelled"):
        handle.get(timeout=60)
    # Cancelled, the task is no longer processing, though the call still waits on a worker.
    assert wait_until(lambda: not processing(cluster), 30), processing(cluster)
    flags.set("release")


@pytest.mark.timeout(2 * WORKERS_RESTART)
def test_a_killed_worker_fails_the_task_with_worker_crashed_error(client: Client) -> None:
    handle = mp.parallel(backend="dask")(kill_own_worker)()
    with pytest.raises(mp.WorkerCrashedError, match="allowed-failures") as caught:
        handle.get(timeout=60)
    assert isinstance(caught.value.__cause__, KilledWorker)
    client.wait_for_workers(2, timeout=WORKERS_RESTART)  # the nannies restart the killed workers
    assert mp.parallel(backend="dask")(square)(3).get(timeout=60) == 9


def kill_own_worker_at_3(x: int) -> int:
    if x == 3:
        kill_own_worker()
    return x


@pytest.mark.timeout(4 * WORKERS_RESTART)
def test_a_map_chunk_whose_worker_died_fails_its_items_as_on_error_says(client: Client) -> None:
    # The chunk's WorkerCrashedError failed the whole map, whatever on_error said, and named no item.
    try:
        assert mp.parallel_map(kill_own_worker_at_3, range(6), backend="dask", chunksize=2, on_error="skip") == [0, 1, 4, 5]
        client.wait_for_workers(2, timeout=WORKERS_RESTART)
        assert mp.parallel_map(kill_own_worker_at_3, [3], backend="dask", on_error="none") == [None]  # a map of one item
        client.wait_for_workers(2, timeout=WORKERS_RESTART)
        with pytest.raises(mp.WorkerCrashedError, match=r"^items 2 to 3 of the map were lost with the worker") as caught:
            mp.parallel_map(kill_own_worker_at_3, range(6), backend="dask", chunksize=2)
        assert isinstance(caught.value.__cause__, mp.WorkerCrashedError)
        assert isinstance(caught.value.__cause__.__cause__, KilledWorker)
    finally:
        client.wait_for_workers(2, timeout=WORKERS_RESTART)


def square_on_a_new_task(x: int) -> int:
    return mp.parallel(backend="dask")(square)(x).get(timeout=30) + 1


def squares_on_new_tasks(x: int) -> int:
    return sum(mp.parallel_map(square, range(x), backend="dask", chunksize=1, timeout=30))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("outer", [square_on_a_new_task, squares_on_new_tasks])
def test_tasks_that_wait_for_tasks_of_their_own_leave_their_thread_to_them(outer: Any) -> None:
    # One task on each of the cluster's two threads, each waiting for a task it submitted:
    # those never found a thread, and the waits lasted their whole timeout.
    handles = [mp.parallel(backend="dask")(outer)(x) for x in (3, 4)]
    expected = [5, 14] if outer is squares_on_new_tasks else [10, 17]
    assert mp.gather(handles, timeout=90) == expected


def shut_down_after_a_task_of_its_own() -> tuple[int, bool]:
    value = mp.parallel(backend="dask")(square)(3)
    try:
        return value.get(timeout=30), mp.shutdown(timeout_secs=None)  # waits for the worker process's own tasks
    finally:
        mp.reset_shutdown()


def shut_down() -> bool:
    try:
        return mp.shutdown(timeout_secs=None)
    finally:
        mp.reset_shutdown()


@pytest.mark.timeout(120)
def test_shutdown_without_a_timeout_in_a_task_waits_for_the_tasks_of_its_worker_process() -> None:
    # It was refused as "on a thread pool's worker (a callback)": the task is no task of the
    # worker process, and a wait there secedes as its waits for its own tasks do.
    assert mp.parallel(backend="dask")(shut_down)().get(timeout=90) is True
    assert mp.parallel(backend="dask")(shut_down_after_a_task_of_its_own)().get(timeout=90) == (9, True)


@pytest.mark.timeout(120)
def test_shutdown_without_a_timeout_in_a_task_of_an_in_process_cluster_is_refused() -> None:
    # The worker runs in this process, which holds the task: the wait would include its own end.
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as here,
        Client(here, set_as_default=False) as client,
    ):
        previous = _runtime._dask_client
        mp.configure(dask_client=client)
        try:
            with pytest.raises(RuntimeError, match="inside a Dask task that this process sent to a worker of its own"):
                mp.parallel(backend="dask")(shut_down)().get(timeout=90)
        finally:
            mp.configure(dask_client=previous)


@pytest.mark.timeout(120)
def test_a_cluster_that_grows_is_counted_as_it_is_now(flags: Flags) -> None:
    # The threads were counted once, as the client was first used: on a cluster scaled up
    # since (cluster.scale, adapt()), health() reported one worker, the tasks running on the
    # others as queued, and a map kept as few chunks in flight as one worker needs.
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as here,
        Client(here, set_as_default=False) as client,
    ):
        previous = _runtime._dask_client
        mp.configure(dask_client=client)
        try:
            assert mp.parallel(backend="dask")(square)(2).get(timeout=60) == 4
            assert mp.health()["pools"]["dask"]["num_workers"] == 1
            here.scale(3)
            client.wait_for_workers(3, timeout=60)
            assert wait_until(lambda: mp.health()["pools"]["dask"]["num_workers"] == 3, 30)
            handles = [mp.parallel(backend="dask")(wait_for_flag)(flags, "release") for _ in range(3)]
            try:
                assert wait_until(lambda: len(processing(here)) == 3, 30)
                pool = mp.health()["pools"]["dask"]
                assert (pool["busy_workers"], pool["queued_tasks"]) == (3, 0)
            finally:
                flags.set("release")
            assert mp.gather(handles, timeout=60) == ["release"] * 3
        finally:
            mp.configure(dask_client=previous)


def test_closing_the_client_fails_its_running_tasks(cluster: LocalCluster, client: Client, flags: Flags) -> None:
    second = Client(cluster, set_as_default=False)
    mp.configure(dask_client=second)
    try:
        handle = mp.parallel(backend="dask")(wait_for_flag)(flags, "release")
        assert wait_until(lambda: bool(second.processing() and any(second.processing().values())), 30)
        second.close()
        with pytest.raises(mp.ShutdownError, match="Dask client was closed"):
            handle.get(timeout=60)
        refused = r"its Dask client .* is closed .*; pass a running one with makeparallel.configure\(dask_client=client\)"
        with pytest.raises(mp.ShutdownError, match=refused):
            mp.parallel(backend="dask")(square)(2)
        report = mp.health()  # it said ok while every task failed
        assert report["status"] == "unhealthy" and not report["ready"]
        assert any(reason.startswith("dask pool fails every task: its Dask client ") for reason in report["reasons"])
    finally:
        flags.set("release")
        mp.configure(dask_client=client)
    assert not any(reason.startswith("dask pool") for reason in mp.health()["reasons"])  # ready at once
    assert mp.parallel(backend="dask")(square)(4).get(timeout=60) == 16


def test_closing_a_client_no_longer_configured_fails_its_running_tasks(cluster: LocalCluster, client: Client, flags: Flags) -> None:
    # Its task ended "cancelled by its executor", naming the executor of the client configured
    # since: the client of the task was not the one asked whether it closed.
    first = Client(cluster, set_as_default=False)
    mp.configure(dask_client=first)
    try:
        handle = mp.parallel(backend="dask")(wait_for_flag)(flags, "release")
        assert wait_until(lambda: bool(first.processing() and any(first.processing().values())), 30)
        mp.configure(dask_client=client)
        assert mp.parallel(backend="dask")(square)(3).get(timeout=60) == 9  # sent through the client configured now
        first.close()
        with pytest.raises(mp.ShutdownError, match="Dask client was closed"):
            handle.get(timeout=60)
    finally:
        flags.set("release")
        mp.configure(dask_client=client)
        first.close()


def fail_once(flags: Flags) -> str:
    """Fails at its first attempt, then succeeds (attempts counted by a flag file, as workers share nothing)."""
    if flags.is_set("failed once"):
        return "second attempt"
    flags.set("failed once")
    raise ConnectionError("first attempt")


def test_a_retry_goes_to_the_client_configured_while_it_waited(
    cluster: LocalCluster, client: Client, flags: Flags, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It went to the client of the attempt before, closed meanwhile: ShutdownError
    # telling the user to do what they had just done.
    switched = threading.Event()
    start_the_retry = _base._RetryDue._expire

    def start_once_switched(due: Any) -> None:
        # The retry is due on the deadline thread: held there until the clients are
        # switched, however long that takes (a wait of 5 s ran out on a loaded machine).
        assert switched.wait(60), "the test never switched clients"
        start_the_retry(due)

    monkeypatch.setattr(_base._RetryDue, "_expire", start_once_switched)
    second = Client(cluster, set_as_default=False)
    mp.configure(dask_client=second)
    try:
        retry = mp.Retry(on=ConnectionError, attempts=2, wait_initial=0.1, wait_jitter=0)
        handle = mp.parallel(backend="dask", retry=retry)(fail_once)(flags)
        assert wait_until(lambda: handle.status == "waiting to retry", 60)
        second.close()
        mp.configure(dask_client=client)
        switched.set()
        assert handle.get(timeout=60) == "second attempt"
    finally:
        switched.set()
        mp.configure(dask_client=client)
        second.close()


def test_the_current_client_is_used_without_configuration(client: Client) -> None:
    _runtime._dask_client = None
    _runtime._backends.pop("dask", None)
    try:
        with pytest.raises(RuntimeError, match=r"found no Dask client.*configure\(dask_client=client\)"):
            mp.parallel(backend="dask")(square)(2)
        with client.as_current():
            assert mp.parallel(backend="dask")(square)(5).get(timeout=60) == 25
    finally:
        mp.configure(dask_client=client)


@pytest.mark.timeout(120)
def test_health_reports_a_dask_pool_that_has_not_found_its_client(client: Client) -> None:
    # health() read the cluster's size under the pool's lock, and finding the client
    # takes that lock: after a first call found no client, health() waited for itself
    # forever once a client was current, and raised while none was.
    _runtime._dask_client = None
    _runtime._backends.pop("dask", None)
    try:
        with pytest.raises(RuntimeError, match="found no Dask client"):
            mp.parallel(backend="dask")(square)(2)
        assert mp.health()["pools"]["dask"]["num_workers"] >= 1
        reports: list[dict[str, Any]] = []

        def check() -> None:
            with client.as_current():
                reports.append(mp.health())

        checker = threading.Thread(target=check, daemon=True)  # one that hangs fails the test, not the run
        checker.start()
        checker.join(30)
        assert reports and reports[0]["pools"]["dask"]["backend"] == "dask"
    finally:
        mp.configure(dask_client=client)


def test_health_reports_a_dask_pool_that_finds_no_client_as_failing_every_task(client: Client) -> None:
    # Its current client closed (a `with Client(...)` block left), every task was refused with
    # "found no Dask client" while health() said ok, as it once did for a closed client.
    _runtime._dask_client = None
    _runtime._backends.pop("dask", None)
    try:
        with client.as_current():
            assert mp.parallel(backend="dask")(square)(3).get(timeout=60) == 9
        assert mp.health()["status"] == "ok"
        with pytest.raises(RuntimeError, match="found no Dask client"):
            mp.parallel(backend="dask")(square)(2)
        report = mp.health()
        assert report["status"] == "unhealthy" and not report["ready"]
        assert any(
            reason.startswith("dask pool fails every task: backend='dask' found no Dask client")
            for reason in report["reasons"]
        ), report["reasons"]
        with client.as_current():
            assert mp.parallel(backend="dask")(square)(4).get(timeout=60) == 16
        assert mp.health()["status"] == "ok"  # ready again once a client takes the tasks
    finally:
        mp.configure(dask_client=client)


def test_a_retry_that_finds_no_client_ends_the_task_with_its_last_error(client: Client, flags: Flags) -> None:
    # The retry failed the task with the RuntimeError alone, its note listing a
    # second attempt that never ran: what the task itself had raised was lost.
    _runtime._dask_client = None
    _runtime._backends.pop("dask", None)
    try:
        retry = mp.Retry(on=ConnectionError, attempts=2, wait_initial=3.0, wait_jitter=0)  # time to leave the client
        with client.as_current():
            handle = mp.parallel(backend="dask", retry=retry)(fail_once)(flags)
            assert wait_until(lambda: handle.status == "waiting to retry", 60)
        with pytest.raises(ConnectionError, match="first attempt") as caught:
            handle.get(timeout=60)
    finally:
        mp.configure(dask_client=client)
    notes = "\n".join(caught.value.__notes__)
    assert handle.attempts == 1 and "1 attempt(s) failed" in notes
    assert "not retried again: RuntimeError: backend='dask' found no Dask client" in notes


def test_a_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "makeparallel._backends._dask", raising=False)  # imported by a test before, or not
    with pytest.raises(ImportError, match=r'pip install "makeparallel\[dask\]"'):
        _runtime._dask_backend()


def test_dask_client_must_be_a_client() -> None:
    with pytest.raises(TypeError, match="dask_client must be a distributed.Client, got 'tcp://x'"):
        mp.configure(dask_client="tcp://x")
