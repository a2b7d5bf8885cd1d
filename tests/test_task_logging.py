"""Logging with task context: the record factory, the filter, worker processes, structlog, JSON."""

from __future__ import annotations

import io
import json
import logging
import os
import select
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing

import makeparallel as mp
from makeparallel import _task_logging


def unique_name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex}"


class Collect(logging.Handler):
    """Keeps every record it is given."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 20.0) -> list[logging.LogRecord]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.records) >= count, timeout), self.records
            return list(self.records)


@pytest.fixture
def task_logging() -> Iterator[None]:
    """``enable_task_logging()`` for one test; the factory and the flag are put back."""
    previous_factory = logging.getLogRecordFactory()
    previous_enabled = _task_logging._enabled
    _task_logging._enabled = False  # so that this test's call really wraps the factory
    mp.enable_task_logging()
    try:
        yield
    finally:
        logging.setLogRecordFactory(previous_factory)
        _task_logging._enabled = previous_enabled


@pytest.fixture
def collected() -> Iterator[tuple[logging.Logger, Collect]]:
    """A uniquely named logger at DEBUG with a collecting handler, removed afterwards."""
    logger = logging.getLogger(unique_name("task-logging"))
    handler = Collect()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)
        handler.close()


@pytest.fixture
def structlog_defaults() -> Iterator[None]:
    structlog.reset_defaults()
    try:
        yield
    finally:
        structlog.reset_defaults()


def held_task(logger: logging.Logger, name: str, gate: threading.Event, running: threading.Event) -> Any:
    """A thread task that waits on ``gate``, then logs: its metadata is set by then."""

    @mp.parallel(backend="thread", name=name)
    def log_when_released() -> int | None:
        running.set()
        assert gate.wait(10), "the test never opened the gate"
        logger.info("inside the task")
        return mp.get_current_task_id()

    return log_when_released


# -- the record factory ----------------------------------------------------------------------


def test_records_inside_thread_tasks_carry_the_task_context(
    task_logging: None, collected: tuple[logging.Logger, Collect], gate: threading.Event
) -> None:
    logger, handler = collected
    name = unique_name("logged")
    running = threading.Event()
    handle = held_task(logger, name, gate, running)()
    assert running.wait(10)
    handle.set_metadata("request", "r-17")
    handle.set_metadata("attempt", 2)
    gate.set()
    assert handle.get(10) == handle.get_task_id()
    logger.info("outside any task")
    inside, outside = handler.wait_for(2)
    assert inside.getMessage() == "inside the task"
    assert inside.task_id == handle.get_task_id()  # type: ignore[attr-defined]
    assert inside.task_name == name  # type: ignore[attr-defined]
    assert inside.task_metadata == {"request": "r-17", "attempt": 2}  # type: ignore[attr-defined]
    assert outside.task_id is None  # type: ignore[attr-defined]
    assert outside.task_name is None  # type: ignore[attr-defined]
    assert outside.task_metadata == {}  # type: ignore[attr-defined]


def test_metadata_on_a_record_is_a_copy(
    task_logging: None, collected: tuple[logging.Logger, Collect], gate: threading.Event
) -> None:
    logger, handler = collected
    running = threading.Event()
    handle = held_task(logger, unique_name("copied"), gate, running)()
    assert running.wait(10)
    handle.set_metadata("k", "before")
    gate.set()
    handle.get(10)
    handle.set_metadata("k", "after")
    (record,) = handler.wait_for(1)
    assert record.task_metadata == {"k": "before"}  # type: ignore[attr-defined]


def test_records_of_concurrent_tasks_are_not_mixed(
    task_logging: None, collected: tuple[logging.Logger, Collect]
) -> None:
    logger, handler = collected
    name = unique_name("concurrent")
    barrier = threading.Barrier(2, timeout=10)
    mp.configure_thread_pool(2)

    @mp.parallel(backend="thread", name=name)
    def log_twice(label: str) -> int | None:
        logger.info("first %s", label)
        barrier.wait()  # both tasks are inside their task when they log again
        logger.info("second %s", label)
        return mp.get_current_task_id()

    a, b = log_twice("a"), log_twice("b")
    ids = {"a": a.get(10), "b": b.get(10)}
    assert ids == {"a": a.get_task_id(), "b": b.get_task_id()}
    records = handler.wait_for(4)
    for record in records:
        label = record.getMessage().split()[-1]
        assert record.task_id == ids[label]  # type: ignore[attr-defined]
        assert record.task_name == name  # type: ignore[attr-defined]


def test_sync_backend_tasks_carry_the_context_too(
    task_logging: None, collected: tuple[logging.Logger, Collect]
) -> None:
    logger, handler = collected
    name = unique_name("sync-logged")

    @mp.parallel(backend="sync", name=name)
    def log() -> None:
        logger.warning("in sync")

    handle = log()
    handle.get(5)
    (record,) = handler.wait_for(1)
    assert (record.task_id, record.task_name) == (handle.get_task_id(), name)  # type: ignore[attr-defined]


def test_enable_task_logging_is_idempotent(task_logging: None) -> None:
    factory = logging.getLogRecordFactory()
    mp.enable_task_logging()
    assert logging.getLogRecordFactory() is factory


def test_attributes_work_in_a_format_string(
    task_logging: None, collected: tuple[logging.Logger, Collect], gate: threading.Event
) -> None:
    logger, _ = collected
    stream = io.StringIO()
    formatted = logging.StreamHandler(stream)
    formatted.setFormatter(logging.Formatter("%(task_id)s|%(task_name)s|%(task_metadata)s|%(message)s"))
    logger.addHandler(formatted)
    try:
        name = unique_name("formatted")
        running = threading.Event()
        handle = held_task(logger, name, gate, running)()
        assert running.wait(10)
        handle.set_metadata("k", 1)
        gate.set()
        handle.get(10)
        logger.info("outside")
    finally:
        logger.removeHandler(formatted)
        formatted.close()
    inside, outside = stream.getvalue().splitlines()
    assert inside == f"{handle.get_task_id()}|{name}|{{'k': 1}}|inside the task"
    assert outside == "None|None|{}|outside"


@pytest.mark.parametrize("key", ["task_id", "task_name", "task_metadata"])
@pytest.mark.parametrize("in_task", [False, True], ids=["outside", "in-a-task"])
def test_an_extra_of_the_same_name_wins_over_the_context(
    task_logging: None, collected: tuple[logging.Logger, Collect], key: str, in_task: bool
) -> None:
    """``extra={"task_id": ...}`` was a ``KeyError`` from ``makeRecord`` at the logging call itself."""
    logger, handler = collected

    def log() -> int | None:
        logger.info("with an extra", extra={key: "the caller's"})
        return mp.get_current_task_id()

    task_id = mp.parallel(log, backend="thread", name="extra-logger")().get(10) if in_task else log()
    (record,) = handler.wait_for(1)
    assert getattr(record, key) == "the caller's"
    context = {"task_id": task_id, "task_name": "extra-logger" if in_task else None, "task_metadata": {}}
    for other, value in context.items():  # the others are still the task's
        if other != key:
            assert getattr(record, other) == value


@pytest.mark.parametrize("key", ["task_id", "task_name", "task_metadata"])
def test_the_filter_fills_what_an_extra_left_out(plain_factory: None, key: str) -> None:
    """An ``extra`` of one name kept the filter from adding the other two: ``%(task_name)s`` then failed."""
    record = logging.makeLogRecord({key: "the caller's"})
    mp.TaskContextFilter().filter(record)
    context = {"task_id": None, "task_name": None, "task_metadata": {}, key: "the caller's"}
    assert {name: getattr(record, name, "missing") for name in context} == context


# -- the filter --------------------------------------------------------------------------------


@pytest.fixture
def plain_factory() -> Iterator[None]:
    """The standard record factory, so that only the filter can add the context."""
    previous = logging.getLogRecordFactory()
    logging.setLogRecordFactory(logging.LogRecord)
    try:
        yield
    finally:
        logging.setLogRecordFactory(previous)


def test_task_context_filter_on_a_handler_without_the_factory(plain_factory: None, gate: threading.Event) -> None:
    logger = logging.getLogger(unique_name("filtered"))
    handler = Collect()
    handler.addFilter(mp.TaskContextFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        name = unique_name("filter-task")
        running = threading.Event()
        handle = held_task(logger, name, gate, running)()
        assert running.wait(10)
        handle.set_metadata("tenant", "acme")
        gate.set()
        handle.get(10)
        logger.info("outside")
    finally:
        logger.removeHandler(handler)
    inside, outside = handler.wait_for(2)
    assert inside.task_id == handle.get_task_id()  # type: ignore[attr-defined]
    assert inside.task_name == name  # type: ignore[attr-defined]
    assert inside.task_metadata == {"tenant": "acme"}  # type: ignore[attr-defined]
    assert (outside.task_id, outside.task_name, outside.task_metadata) == (None, None, {})  # type: ignore[attr-defined]


def test_task_context_filter_drops_nothing() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "message", None, None)
    assert mp.TaskContextFilter().filter(record) is True
    assert (record.task_id, record.task_name, record.task_metadata) == (None, None, {})  # type: ignore[attr-defined]


# -- worker processes ----------------------------------------------------------------------------


def wait_for_release(fifo: str) -> None:
    """In a worker: wait for the test's byte on ``fifo`` (see :class:`Fifo`)."""
    fd = os.open(fifo, os.O_RDONLY)
    try:
        readable, _, _ = select.select([fd], [], [], 20)
        assert readable, "the test never released the task"
        os.read(fd, 1)
    finally:
        os.close(fd)


def log_in_worker(logger_name: str, fifo: str, level: int) -> int:
    """In a worker: wait for the test's byte, then log at ``level`` (the logger set to it)."""
    logger = logging.getLogger(logger_name)
    logger.setLevel(level)  # the worker's own level: not what this test is about
    wait_for_release(fifo)
    logger.log(level, "from pid %d", os.getpid())
    return os.getpid()


def log_info_like_the_readme(logger_name: str) -> int:
    """The README recipe's task body: ``log.info`` on a logger the parent set to INFO."""
    logging.getLogger(logger_name).info("working on %d", 7)
    return os.getpid()


class Fifo:
    """A named pipe the test writes into to release a task in a worker process."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "release")
        os.mkfifo(self.path)
        self._fd = os.open(self.path, os.O_RDWR)  # a writer always exists: reads block, opens do not

    def release(self) -> None:
        os.write(self._fd, b"x" * 16)

    def close(self) -> None:
        os.close(self._fd)


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Fifo]:
    pipe = Fifo(tmp_path)
    try:
        yield pipe
    finally:
        pipe.release()
        pipe.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["factory", "filter", "neither"])
def test_records_from_a_worker_process_reach_the_parent_with_context(
    how: str, fifo: Fifo, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue("task_logging" if how == "factory" else "plain_factory")
    logger = logging.getLogger(unique_name("from-worker"))
    handler = Collect()
    if how == "filter":
        handler.addFilter(mp.TaskContextFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        name = unique_name("worker-task")
        handle = mp.parallel(backend="process", name=name)(log_in_worker)(logger.name, fifo.path, logging.WARNING)
        handle.set_metadata("batch", 9)  # before the task logs: it waits for the FIFO
        fifo.release()
        pid = handle.get(30)
        (record,) = handler.wait_for(1)
    finally:
        logger.removeHandler(handler)
    assert pid != os.getpid()
    assert record.getMessage() == f"from pid {pid}"
    assert record.levelno == logging.WARNING
    assert record.name == logger.name
    assert record.task_id == handle.get_task_id()  # type: ignore[attr-defined]  # stamped in the worker
    assert record.task_name == name  # type: ignore[attr-defined]
    assert record.task_metadata == {"batch": 9}  # type: ignore[attr-defined]  # added by the parent


@pytest.mark.timeout(60)
def test_readme_recipe_info_records_from_a_worker_reach_the_parent(task_logging: None) -> None:
    """The README's logging example, on the process backend.

    The parent sets its ``jobs`` logger to INFO and the task calls ``log.info``:
    README says records logged inside worker processes "reach your handlers in
    the parent".
    """
    logger = logging.getLogger(unique_name("jobs"))
    handler = Collect()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        name = unique_name("readme-job")
        handle = mp.parallel(backend="process", name=name)(log_info_like_the_readme)(logger.name)
        pid = handle.get(30)
        # The record, if sent, precedes the result on the worker's pipe, and the
        # parent emits it before it settles the task: it is here by now.
        records = list(handler.records)
    finally:
        logger.removeHandler(handler)
    assert pid != os.getpid()
    assert [r.getMessage() for r in records] == ["working on 7"], (
        "an INFO record logged in a worker process never reached the parent's "
        f"handler, although the parent's logger {logger.name!r} is at INFO"
    )
    assert records[0].task_id == handle.get_task_id()  # type: ignore[attr-defined]


class Unpicklable:
    """A metadata value that cannot go to another process."""

    def __reduce__(self) -> Any:
        raise TypeError("cannot be pickled")

    def __str__(self) -> str:
        return "an unpicklable value"


def log_from_a_nested_task(logger_name: str, unpicklable: bool = False) -> int:
    """In a worker: have a thread task submitted here log, its metadata set first; its id.

    With ``unpicklable``, one of its metadata values cannot be pickled.
    """
    logger = logging.getLogger(logger_name)
    released = threading.Event()

    def nested() -> None:
        assert released.wait(20)
        logger.info("nested")

    handle = mp.parallel(backend="thread", name="nested-in-worker")(nested)()
    handle.set_metadata("step", 2)
    if unpicklable:
        handle.set_metadata("lock", Unpicklable())
    released.set()
    handle.get(20)
    return handle.get_task_id()


@pytest.mark.timeout(60)
def test_a_record_of_a_task_submitted_in_a_worker_has_that_tasks_metadata(
    task_logging: None, collected: tuple[logging.Logger, Collect]
) -> None:
    # Its id is the worker's, and the parent gave it the metadata of its own task of
    # that id on that worker (in a fresh program, the outer task's), or none.
    logger, handler = collected
    outer = mp.parallel(backend="process")(log_from_a_nested_task)(logger.name)
    outer.set_metadata("secret", "the outer task's")
    nested_id = outer.get(30)
    (record,) = handler.wait_for(1)
    assert record.getMessage() == "nested"
    assert record.task_id == nested_id  # type: ignore[attr-defined]
    assert record.task_name == "nested-in-worker"  # type: ignore[attr-defined]
    assert record.task_metadata == {"step": 2}  # type: ignore[attr-defined]


@pytest.mark.timeout(60)
def test_a_nested_tasks_metadata_value_that_cannot_be_pickled_costs_that_value_alone(
    task_logging: None, collected: tuple[logging.Logger, Collect]
) -> None:
    # The whole metadata dict was pickled as one: one value that could not be
    # made the record's task_metadata a str (the dict's text), not a dict.
    logger, handler = collected
    mp.parallel(backend="process")(log_from_a_nested_task)(logger.name, unpicklable=True).get(30)
    (record,) = handler.wait_for(1)
    assert record.task_metadata == {"step": 2, "lock": "an unpicklable value"}  # type: ignore[attr-defined]


def log_with_an_extra(logger_name: str, fifo: str, extra: dict[str, Any]) -> int:
    """In a worker: wait for the test's byte, then log with ``extra``; the worker's pid."""
    wait_for_release(fifo)
    logging.getLogger(logger_name).info("with an extra", extra=extra)
    return os.getpid()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # The parent looked up the metadata of its own task of that id, or none: {}.
        ({"task_id": 10**9}, {"task_id": 10**9, "task_metadata": {"batch": 9}}),
        # The parent replaced it with the handle's: on threads the caller's wins.
        ({"task_metadata": {"mine": 1}}, {"task_metadata": {"mine": 1}}),
    ],
    ids=["task_id", "task_metadata"],
)
def test_an_extra_of_a_process_tasks_record_wins_there_as_on_threads(
    task_logging: None,
    collected: tuple[logging.Logger, Collect],
    fifo: Fifo,
    extra: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    logger, handler = collected
    handle = mp.parallel(backend="process")(log_with_an_extra)(logger.name, fifo.path, extra)
    handle.set_metadata("batch", 9)  # before the task logs: it waits for the FIFO
    fifo.release()
    assert handle.get(30) != os.getpid()
    (record,) = handler.wait_for(1)
    assert {key: getattr(record, key) for key in expected} == expected


# -- structlog ----------------------------------------------------------------------------------


def test_add_task_context_called_directly(gate: threading.Event) -> None:
    assert mp.add_task_context(None, "info", {"event": "outside"}) == {"event": "outside"}
    name = unique_name("structlog-direct")
    running = threading.Event()
    seen: list[Any] = []

    @mp.parallel(backend="thread", name=name)
    def inside() -> None:
        running.set()
        assert gate.wait(10)
        seen.append(mp.add_task_context(None, "info", {"event": "inside"}))
        seen.append(mp.add_task_context(None, "info", {"event": "mine", "task_id": "kept"}))

    handle = inside()
    assert running.wait(10)
    handle.set_metadata("user", "ada")
    gate.set()
    handle.get(10)
    assert seen[0] == {
        "event": "inside",
        "task_id": handle.get_task_id(),
        "task_name": name,
        "task_metadata": {"user": "ada"},
    }
    assert seen[1]["task_id"] == "kept"  # the caller's own value wins


def test_add_task_context_leaves_out_empty_metadata() -> None:
    name = unique_name("structlog-no-metadata")

    @mp.parallel(backend="sync", name=name)
    def inside() -> Any:
        return mp.add_task_context(None, "info", {"event": "e"})

    handle = inside()
    assert handle.get(5) == {"event": "e", "task_id": handle.get_task_id(), "task_name": name}


def test_add_task_context_in_a_structlog_configuration(structlog_defaults: None, gate: threading.Event) -> None:
    stream = io.StringIO()
    structlog.configure(
        processors=[mp.add_task_context, structlog.processors.JSONRenderer(sort_keys=True)],
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    log = structlog.get_logger()
    name = unique_name("structlog-configured")
    running = threading.Event()

    @mp.parallel(backend="thread", name=name)
    def inside() -> None:
        running.set()
        assert gate.wait(10)
        log.info("in task", step=1)

    handle = inside()
    assert running.wait(10)
    handle.set_metadata("job", "j1")
    gate.set()
    handle.get(10)
    log.info("outside")
    inside_line, outside_line = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside_line == {
        "event": "in task",
        "step": 1,
        "task_id": handle.get_task_id(),
        "task_name": name,
        "task_metadata": {"job": "j1"},
    }
    assert outside_line == {"event": "outside"}


def test_add_task_context_with_capture_logs(structlog_defaults: None) -> None:
    name = unique_name("structlog-captured")

    @mp.parallel(backend="sync", name=name)
    def inside() -> None:
        structlog.get_logger().info("captured")

    with structlog.testing.capture_logs(processors=[mp.add_task_context]) as logs:
        handle = inside()
        handle.get(5)
        structlog.get_logger().info("after")
    assert logs == [
        {"event": "captured", "log_level": "info", "task_id": handle.get_task_id(), "task_name": name},
        {"event": "after", "log_level": "info"},
    ]


# -- the README's JSON recipe -------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "level": record.levelname,
                "message": record.getMessage(),
                "task_id": record.task_id,  # type: ignore[attr-defined]
                "task_name": record.task_name,  # type: ignore[attr-defined]
                "task_metadata": record.task_metadata,  # type: ignore[attr-defined]
            }
        )


def test_json_logging_recipe(task_logging: None, gate: threading.Event) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(unique_name("jobs"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    running = threading.Event()
    name = unique_name("json-job")
    try:

        @mp.parallel(backend="thread", name=name)
        def job(n: int) -> int:
            running.set()
            assert gate.wait(10)
            log.info("working on %d", n)
            return n

        handle = job(7)
        assert running.wait(10)
        handle.set_metadata("customer", "c-1")
        gate.set()
        assert handle.get(10) == 7
        log.info("done")
    finally:
        log.removeHandler(handler)
        handler.close()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first == {
        "level": "INFO",
        "message": "working on 7",
        "task_id": handle.get_task_id(),
        "task_name": name,
        "task_metadata": {"customer": "c-1"},
    }
    assert second == {"level": "INFO", "message": "done", "task_id": None, "task_name": None, "task_metadata": {}}
