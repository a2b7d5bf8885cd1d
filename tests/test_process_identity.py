"""A worker process names itself as one: ``multiprocessing`` and ``logging`` say ``makeparallel-process-N``.

In a task, ``multiprocessing.current_process().name`` is the worker's name,
``multiprocessing.parent_process()`` the program, and a log record's
``processName`` the worker's, whether or not the task imports
``multiprocessing`` (a worker never imports it on its own), in workers forked
from the template and in fresh interpreters alike; a task that starts a
``multiprocessing.Pool`` of its own still can, and its children know their parent.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pool_helpers import Flags, fresh_process_pool
from test_process_template import run_fresh

import makeparallel as mp
from makeparallel._backends import _process

pytestmark = [
    pytest.mark.skipif(os.name != "posix", reason="the process backend is POSIX-only for now"),
    pytest.mark.timeout(60),
]

on_process = mp.parallel(backend="process")
WORKER_NAME = re.compile(r"makeparallel-process-[1-9][0-9]*")
both_ways = pytest.mark.parametrize("template", [True, False], ids=["forked from the template", "fresh interpreters"])


@pytest.fixture
def flags() -> Iterator[Flags]:
    with tempfile.TemporaryDirectory() as directory:
        yield Flags(directory)
        Flags(directory).set("teardown")  # a task still waiting goes on


@pytest.fixture
def cold_pool(template: bool, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Two cold workers, forked from the template or fresh interpreters (``template``)."""
    if not template:
        monkeypatch.setattr(_process, "template_available", lambda: False)
    fresh_process_pool(2)
    yield
    mp.configure_process_pool(initializer=None, max_tasks_per_child=None)
    fresh_process_pool(2)  # no worker of this module's kind left to the next test


# -- tasks ------------------------------------------------------------------------------------------


def identity() -> dict[str, Any]:
    """What ``multiprocessing`` says of this process and its parent, and whether it had to import it."""
    imported_before = "multiprocessing" in sys.modules
    import multiprocessing

    current = multiprocessing.current_process()
    parent = multiprocessing.parent_process()
    return {
        "imported_before": imported_before,
        "pid": os.getpid(),
        "name": current.name,
        "repr": repr(current),
        "daemon": current.daemon,
        "parent": None if parent is None else (parent.name, parent.pid, parent.is_alive()),
    }


def meet(flags: Flags, mine: str, theirs: str) -> dict[str, Any]:
    """``identity()``, once the task that sets flag ``theirs`` runs beside this one: on another worker."""
    flags.set(mine)
    assert flags.wait_for_release(theirs)
    return identity()


def log_a_record(logger_name: str) -> dict[str, Any]:
    """Log a record, to the parent and to a handler of the task's own; what that handler formatted."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep()
    handler.setFormatter(logging.Formatter("%(processName)s"))
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        logger.warning("from a task")
    finally:
        logger.removeHandler(handler)
    return {"multiprocessing_imported": "multiprocessing" in sys.modules, "formatted": lines}


class _RecordOfItsOwn(logging.LogRecord):
    """A record class a task makes its record factory, which calls no factory set before it."""


def make_records_of_its_own() -> None:
    logging.setLogRecordFactory(_RecordOfItsOwn)


_named_in_initializer: list[str] = []


def name_in_initializer() -> None:
    import multiprocessing

    _named_in_initializer.append(multiprocessing.current_process().name)


def initializer_saw() -> tuple[list[str], str]:
    import multiprocessing

    return _named_in_initializer, multiprocessing.current_process().name


def names_in_a_pool_of_its_own() -> tuple[str, int, list[tuple[str, str, int]]]:
    """This worker's name and pid, and what the children of a fork-based ``Pool`` it starts say of themselves."""
    import multiprocessing

    pool = multiprocessing.get_context("fork").Pool(2)
    try:
        children = pool.map(_child_identity, range(2))
    finally:
        pool.close()  # its workers end once idle: none is killed holding the queue's lock (terminate())
        pool.join()
    return multiprocessing.current_process().name, os.getpid(), children


def a_nested_worker_s_identity() -> tuple[str, int, dict[str, Any]]:
    """This worker's name and pid, and ``identity()`` in a worker of a process pool of its own."""
    import multiprocessing

    try:
        return multiprocessing.current_process().name, os.getpid(), on_process(identity)().get(timeout=30)
    finally:
        mp.shutdown(10)  # this worker's own pool, and its processes
        mp.reset_shutdown()


def _child_identity(_: int) -> tuple[str, str, int]:
    import multiprocessing

    parent = multiprocessing.parent_process()
    assert parent is not None
    return multiprocessing.current_process().name, parent.name, parent.pid


def records_of_a_task(logger_name: str) -> tuple[dict[str, Any], list[logging.LogRecord]]:
    """What a process task logging to ``logger_name`` saw (:func:`log_a_record`), and the records the program's handler got."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(logger_name)
    handler = Collect()
    logger.addHandler(handler)
    try:
        logged = on_process(log_a_record)(logger_name).get(timeout=30)
    finally:
        logger.removeHandler(handler)
    return logged, records


# -- tests ------------------------------------------------------------------------------------------


@both_ways
@pytest.mark.usefixtures("cold_pool")
def test_a_task_s_process_is_named_as_its_worker(flags: Flags) -> None:
    # multiprocessing said MainProcess in every worker: a task's process was the program's, by its name.
    first = on_process(meet)(flags, "a", "b")
    second = on_process(meet)(flags, "b", "a")
    seen = [first.get(timeout=30), second.get(timeout=30)]
    for worker in seen:
        assert WORKER_NAME.fullmatch(worker["name"]), worker
        assert f"name='{worker['name']}'" in worker["repr"]
        assert f"parent={os.getpid()}" in worker["repr"]
        assert not worker["imported_before"]  # a worker imports multiprocessing only for a task that does
        assert not worker["daemon"]  # so that a task may start processes of its own
    assert seen[0]["pid"] != seen[1]["pid"]
    assert seen[0]["name"] != seen[1]["name"]


@both_ways
@pytest.mark.usefixtures("cold_pool")
def test_a_task_s_parent_process_is_the_program() -> None:
    # parent_process() was None, as in a program started by no one.
    worker = on_process(identity)().get(timeout=30)
    import multiprocessing

    assert worker["parent"] == (multiprocessing.current_process().name, os.getpid(), True)


@both_ways
@pytest.mark.usefixtures("cold_pool")
def test_a_record_a_task_logs_names_its_worker_without_importing_multiprocessing() -> None:
    # logging reads processName from multiprocessing only where it is imported, else
    # MainProcess: a worker's records read as if the program had logged them.
    mp.configure_process_pool(num_workers=1)
    logged, records = records_of_a_task("test_process_identity.records")
    worker = on_process(identity)().get(timeout=30)  # the same worker, which imports multiprocessing now
    assert WORKER_NAME.fullmatch(worker["name"])
    assert not logged["multiprocessing_imported"]
    assert logged["formatted"] == [worker["name"]]  # a handler of the task's own
    assert [record.processName for record in records] == [worker["name"]]  # the program's


@both_ways
@pytest.mark.usefixtures("cold_pool")
def test_a_record_of_a_factory_of_the_task_s_own_names_its_worker_to_the_program() -> None:
    # A factory that calls none before it (a LogRecord class) makes records that say MainProcess
    # where multiprocessing is not imported: the program's handlers showed them as its own.
    mp.configure_process_pool(num_workers=1, initializer=make_records_of_its_own)
    logged, records = records_of_a_task("test_process_identity.own_records")
    worker = on_process(identity)().get(timeout=30)  # the same worker, which imports multiprocessing now
    assert not logged["multiprocessing_imported"]
    assert [record.processName for record in records] == [worker["name"]]


@both_ways
@pytest.mark.usefixtures("cold_pool")
def test_an_initializer_runs_under_its_worker_s_name() -> None:
    mp.configure_process_pool(num_workers=1, initializer=name_in_initializer)
    in_initializer, in_task = on_process(initializer_saw)().get(timeout=30)
    assert WORKER_NAME.fullmatch(in_task)
    assert in_initializer == [in_task]


@both_ways
@pytest.mark.usefixtures("cold_pool")
def test_a_replacement_worker_takes_a_new_number() -> None:
    mp.configure_process_pool(num_workers=1, max_tasks_per_child=1)  # each task on a worker of its own
    seen = [on_process(identity)().get(timeout=30) for _ in range(3)]
    assert len({worker["pid"] for worker in seen}) == 3
    numbers = [int(worker["name"].rsplit("-", 1)[1]) for worker in seen]
    assert numbers == sorted(set(numbers))


@both_ways
@pytest.mark.usefixtures("cold_pool")
def test_a_task_may_start_a_pool_whose_workers_know_their_parent() -> None:
    name, pid, children = on_process(names_in_a_pool_of_its_own)().get(timeout=45)
    assert WORKER_NAME.fullmatch(name)
    assert len(children) == 2
    for child_name, parent_name, parent_pid in children:
        assert child_name.startswith("ForkPoolWorker-")
        assert (parent_name, parent_pid) == (name, pid)


@both_ways
@pytest.mark.usefixtures("cold_pool")
def test_a_nested_pool_s_worker_is_named_under_its_worker() -> None:
    # A worker's own pool numbered its workers from 1, as the program's does: its first took the
    # name of the program's first worker (often its own parent), and records logged in either,
    # forwarded to the program, read as one process's.
    name, pid, nested = on_process(a_nested_worker_s_identity)().get(timeout=45)
    assert WORKER_NAME.fullmatch(name)
    assert re.fullmatch(re.escape(name) + r":[1-9][0-9]*", nested["name"]), nested
    assert nested["parent"] == (name, pid, True)


@both_ways
def test_a_worker_that_imported_multiprocessing_as_it_started_is_named_too(template: bool, tmp_path: Path) -> None:
    # A sitecustomize that imports multiprocessing: in the template (whose module a
    # forked worker has from the fork), or in each fresh interpreter, before its set-up.
    (tmp_path / "sitecustomize.py").write_text("import multiprocessing\n")
    out = run_fresh(
        """
        import json, os
        import makeparallel as mp
        from test_process_identity import identity

        print(os.getpid(), json.dumps(mp.parallel(backend="process")(identity)().get(timeout=30)).replace(" ", ""))
        """,
        template=template,
        path=(str(tmp_path),),
    )
    program, worker = int(out[0]), json.loads(out[1])
    assert worker["imported_before"]
    assert WORKER_NAME.fullmatch(worker["name"])
    assert worker["parent"] == ["MainProcess", program, True]


# -- what a task leaves in its worker ---------------------------------------------------------------


def on_usr1(signum: int, frame: Any) -> None:
    """The handler a task installs (it never runs: no signal is sent)."""


@on_process
def install_a_handler() -> int:
    signal.signal(signal.SIGUSR1, on_usr1)
    return os.getpid()


@on_process
def handler_found() -> tuple[int, str]:
    handler = signal.getsignal(signal.SIGUSR1)
    return os.getpid(), getattr(handler, "__qualname__", repr(handler))


@both_ways
@pytest.mark.parametrize("per_child", [None, 1], ids=["workers kept", "max_tasks_per_child=1"])
@pytest.mark.usefixtures("cold_pool")
def test_a_signal_handler_a_task_installs_stays_for_its_worker_s_next_tasks(per_child: int | None) -> None:
    # As os.chdir or os.environ do (the README's list of what stays in a worker): one worker, two tasks.
    mp.configure_process_pool(num_workers=1, max_tasks_per_child=per_child)
    installed_in = install_a_handler().get(timeout=30)
    found_in, handler = handler_found().get(timeout=30)
    if per_child is None:
        assert (found_in, handler) == (installed_in, "on_usr1")
    else:  # a new worker: the handler the template or a fresh interpreter has
        assert found_in != installed_in
        assert handler == repr(signal.SIG_DFL)
