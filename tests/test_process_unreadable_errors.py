"""An error a worker process raised that cannot be unpickled here still tells what it was.

Its class, the class of an error in its chain, of an attribute or of a group's
member may come from a module only the worker imports. The task then fails
with a ``TaskSerializationError``; the worker's traceback (the whole chain as
the worker printed it, each error's type and message) hangs below it as a
``RemoteTraceback``, as it does below an error that arrives as itself, and its
message gives the error's type and text. One table of the ways such an error is
made, then every way it reaches the caller: ``get()``, ``await``, an
``Executor``'s future, a group, a callback, a retry policy, a map, and a
worker's initializer.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pool_helpers import fresh_process_pool
from worker_only_errors import (
    DESCRIPTIONS,
    HOWS,
    raise_worker_only,
    raise_worker_only_at_item_one,
    write_module,
)

import makeparallel as mp
from makeparallel._remote_errors import RemoteTraceback

pytestmark = [
    pytest.mark.skipif(os.name != "posix", reason="the process backend is POSIX-only for now"),
    pytest.mark.timeout(60),
]

UNPICKLING = "could not be unpickled here: ModuleNotFoundError: No module named 'errors_of_the_workers'"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A folder holding ``errors_of_the_workers``, which only the workers put on their ``sys.path``.

    The workers that did are stopped afterwards: the next tests start clean ones.
    """
    path = tmp_path_factory.mktemp("only_the_workers")
    write_module(str(path))
    yield str(path)
    fresh_process_pool(mp.get_process_pool_info()["num_workers"])


def remote_text(error: BaseException) -> str:
    """The text of the RemoteTraceback hung below the deepest exception of ``error``'s chain."""
    deepest, seen = error, {id(error)}
    while True:
        below = deepest.__cause__ if deepest.__cause__ is not None else (
            None if deepest.__suppress_context__ else deepest.__context__
        )
        if below is None or isinstance(below, RemoteTraceback) or id(below) in seen:
            break
        seen.add(id(below))
        deepest = below
    assert isinstance(deepest.__cause__, RemoteTraceback), f"no worker traceback below {deepest!r}"
    return str(deepest.__cause__)


def assert_tells_what_was_raised(error: BaseException, how: str) -> None:
    """``error`` names what the worker raised, and carries the worker's traceback of it, chain and all."""
    assert type(error) is mp.TaskSerializationError, repr(error)
    message = str(error)
    assert f"({DESCRIPTIONS[how]})" in message, message
    assert UNPICKLING in message, message
    text = remote_text(error)
    assert "raise_worker_only" in text, text  # where it was raised
    if how != "attribute":  # (Python prints no attribute)
        assert "errors_of_the_workers.PluginError: no licence" in text, text  # the error only the worker can read
    if how != "itself":
        assert DESCRIPTIONS[how].split(" (")[0] in text, text


@pytest.mark.parametrize("how", HOWS)
def test_an_error_that_cannot_be_unpickled_here_tells_its_type_message_and_worker_traceback(folder: str, how: str) -> None:
    # It said only "raised an exception in its worker process that could not be
    # unpickled here: ModuleNotFoundError: ...": no type, no message, no line.
    if how == "member" and sys.version_info < (3, 11):
        pytest.importorskip("exceptiongroup")
    with pytest.raises(BaseException) as raised:
        mp.parallel(backend="process")(raise_worker_only)(folder, how).get(timeout=30)
    assert_tells_what_was_raised(raised.value, how)


async def _awaited(handle: mp.AsyncHandle[Any]) -> Any:
    return await handle


def _by_get(folder: str) -> BaseException:
    with pytest.raises(BaseException) as raised:
        mp.parallel(backend="process")(raise_worker_only)(folder, "cause").get(timeout=30)
    return raised.value


def _by_await(folder: str) -> BaseException:
    handle = mp.parallel(backend="process")(raise_worker_only)(folder, "cause")
    with pytest.raises(BaseException) as raised:
        asyncio.run(asyncio.wait_for(_awaited(handle), 30))
    return raised.value


def _by_executor(folder: str) -> BaseException:
    with mp.Executor(backend="process") as executor:
        future = executor.submit(raise_worker_only, folder, "cause")
        with pytest.raises(BaseException) as raised:
            future.result(timeout=30)
    return raised.value


def _by_group(folder: str) -> BaseException:
    with pytest.raises(BaseException) as raised, mp.ParallelContext(timeout=30, backend="process") as group:
        group.submit(raise_worker_only, folder, "cause")
    return raised.value


def _by_gather(folder: str) -> BaseException:
    handle = mp.parallel(backend="process")(raise_worker_only)(folder, "cause")
    with pytest.raises(BaseException) as raised:
        mp.gather([handle], timeout=30)
    return raised.value


def _by_callback(folder: str) -> BaseException:
    called = threading.Event()
    errors: list[BaseException] = []

    def record(error: BaseException) -> None:
        errors.append(error)
        called.set()

    mp.parallel(backend="process")(raise_worker_only)(folder, "cause").on_error(record)
    assert called.wait(30)
    return errors[0]


def _by_retry_policy(folder: str) -> BaseException:
    seen: list[BaseException] = []

    def asked(error: BaseException) -> bool:
        seen.append(error)
        return False  # decided on what it can read: not retried

    policy = mp.Retry(on=asked, attempts=2, wait_initial=0, wait_jitter=0)
    with pytest.raises(BaseException) as raised:
        mp.parallel(backend="process", retry=policy)(raise_worker_only)(folder, "cause").get(timeout=30)
    assert seen == [raised.value]
    return seen[0]


def _by_map(chunksize: int) -> Callable[[str], BaseException]:
    def mapped(folder: str) -> BaseException:
        fn = functools.partial(raise_worker_only_at_item_one, folder, "cause")
        with pytest.raises(BaseException) as raised:
            mp.parallel_map(fn, range(3), backend="process", chunksize=chunksize, timeout=30)
        return raised.value

    return mapped


WAYS: dict[str, Callable[[str], BaseException]] = {
    "get": _by_get,
    "await": _by_await,
    "executor": _by_executor,
    "group": _by_group,
    "gather": _by_gather,
    "on_error": _by_callback,
    "retry-policy": _by_retry_policy,
    "map-chunks-of-one": _by_map(1),
    "map-chunk-of-three": _by_map(3),
}


@pytest.mark.parametrize("way", list(WAYS))
def test_every_way_of_waiting_gets_what_can_be_read_of_such_an_error(folder: str, way: str) -> None:
    error = WAYS[way](folder)
    assert_tells_what_was_raised(error, "cause")
    if way.startswith("map"):
        assert "item" in str(error), str(error)  # names the map's items


@pytest.mark.timeout(90)
def test_an_initializer_error_that_cannot_be_unpickled_here_tells_what_it_was(folder: str) -> None:
    fresh_process_pool(1)
    initializer = functools.partial(raise_worker_only, folder, "cause")
    mp.configure_process_pool(initializer=initializer)
    try:
        with pytest.raises(mp.WorkerCrashedError) as raised:
            mp.parallel(backend="process")(abs)(-1).get(timeout=30)
    finally:
        mp.configure_process_pool(initializer=None)
    cause = raised.value.__cause__
    assert cause is not None
    assert f"({DESCRIPTIONS['cause']})" in str(cause), str(cause)
    assert "errors_of_the_workers.PluginError: no licence" in remote_text(cause)
