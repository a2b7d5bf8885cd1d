"""A worker's log records go to the parent, whose handlers emit them.

Imported by a worker only once ``logging`` is (``_process_worker``): most
tasks never log, and ``logging`` with what it imports (``re``, ``traceback``,
``string``) was the largest import of a cold worker before its first task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .. import _serialization
from .._task_context import current_task
from .._task_logging import _stamp
from ._worker_identity import worker_name

__all__ = ["forward_records"]

# What every record has, each a str, a number or None once the message is formatted
# (the task's id and name too); any other attribute is an ``extra`` (or a record
# factory's), which may be anything.
_PLAIN = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "task_id", "task_name"}
# What the parent unpickles whatever it imports: the types of a record's own attributes.
_ATOMS = frozenset({str, int, float, bool, type(None)})
# Set apart: the message formatted here, the traceback as text; the parent adds the task's metadata.
_SET_HERE = frozenset({"msg", "args", "exc_info", "task_metadata"})


class _ForwardingHandler(logging.Handler):
    """Sends each log record to the parent, whose handlers then emit it.

    The parent adds the metadata of the task a record names, set on its
    handle there. A task submitted in this process (a handle here, where the
    parent's task is a stand-in without metadata) is not the parent's: its id
    is this process's, which may be one of the parent's tasks' too (the
    parent gave its records that task's metadata). So its own metadata, known
    here, goes with the record, each value packed alone (one that cannot be
    pickled, or unpickled in the parent, is its text; the rest stay as they are).
    So does an ``extra={"task_metadata": ...}`` of the caller's, which wins, as
    in the parent. Otherwise the parent's task is named apart from the record's
    ``task_id``, which an ``extra`` may have replaced: the parent looked up the
    metadata of whatever task of its own had that id.
    """

    def __init__(self, send: Callable[[tuple[Any, ...]], None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            given = record.__dict__.get("task_metadata")  # an extra's (a stand-in's own is {}, stamped here)
            _stamp(record)  # the task's id and name, known here; the parent adds a task's metadata
            attributes: dict[str, Any] = {}
            extras: dict[str, tuple[bytes | None, str]] = {}
            for key, value in record.__dict__.items():
                if not isinstance(key, str) or key in _SET_HERE:
                    continue
                name = _exact(key)
                if name in _PLAIN and type(value) in _ATOMS:
                    attributes[name] = value
                elif name in _PLAIN and isinstance(value, (str, int, float)):  # an IntEnum level, a str subclass
                    attributes[name] = _exact(value)
                else:
                    extras[name] = _packed(value)
            if attributes.get("processName") == "MainProcess":  # a factory of the task's own: _name_records
                attributes["processName"] = worker_name() or "MainProcess"
            attributes["msg"] = _exact(record.getMessage())
            attributes["args"] = None
            if record.exc_info:
                attributes["exc_text"] = logging.Formatter().formatException(record.exc_info)
            attributes["exc_info"] = None
            metadata: dict[str, tuple[bytes | None, str]] | None = None
            owner = None  # the parent's task whose metadata the record takes there
            task = current_task()
            nested = hasattr(task, "_metadata")  # a task submitted here, not one of the parent's: see above
            own = record.__dict__.get("task_metadata") if nested else given
            if nested or own:  # its own metadata, or the caller's extra, goes with the record
                if type(own) is dict:  # each value alone, as an extra: one the parent cannot read costs itself
                    metadata = {_exact(key): _packed(value) for key, value in own.items()}
                else:
                    extras["task_metadata"] = _packed(own)
            elif task is not None:  # by the id the parent gave it, whatever task_id an extra says
                owner = task.get_task_id()
            self._send(("log", attributes, extras, metadata, owner))
        except Exception:
            self.handleError(record)


def _exact(value: str | float) -> Any:
    """``value`` as an exact ``str``, ``int`` or ``float``: a subclass's class may be one only this worker imports."""
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int.__int__(value)
    return float.__float__(value) if isinstance(value, float) else value


def _packed(value: Any) -> tuple[bytes | None, str]:
    """An ``extra`` of a record, pickled (None if it cannot be), and as text, for a parent that cannot unpickle it.

    Pickled alone, as a task's result is (an exception comes back equal), so
    that one the parent cannot read (a class only this worker imports) costs
    that ``extra`` alone, not the record, nor the pool's loop thread.
    """
    data: bytes | None
    try:
        data = _serialization.dumps_in_band(value)  # a record may be logged while a result is pickled
    except Exception:
        data = None
    try:
        text = _exact(str(value))  # (__str__ may give a str subclass)
    except Exception as error:
        text = f"<{type(value).__qualname__} that str() failed on: {type(error).__name__}: {error}>"
    return data, text


def forward_records(send: Callable[[tuple[Any, ...]], None]) -> None:
    """Send every record logged in this process with ``send``, whatever its level.

    The root logger is set to DEBUG: the parent's loggers decide, as they are
    configured at the time, which records to emit.
    """
    root = logging.getLogger()
    root.handlers[:] = [_ForwardingHandler(send)]
    root.setLevel(logging.DEBUG)
    _name_records()


def _name_records() -> None:
    """Have each record made here name this worker as its ``processName``, as ``multiprocessing`` would.

    ``logging`` reads the name from ``multiprocessing`` where it is imported,
    and says ``MainProcess`` where it is not: a worker's records, in the
    program's handlers and in a task's own, read as if the program had logged
    them. A worker imports ``multiprocessing`` only for a task that does
    (``_worker_identity``), so until then the record factory sets it. A
    factory set after this one that does not call it (``getLogRecordFactory()``),
    a ``LogRecord`` class, makes records that say ``MainProcess`` again in a
    task's own handlers; :class:`_ForwardingHandler` names the worker in those
    it sends, so the program's handlers show them as the worker's.
    """
    make_record = logging.getLogRecordFactory()

    def make_named_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if record.processName == "MainProcess":  # not None: logging.logMultiprocessing off
            name = worker_name()
            if name is not None:
                record.processName = name
        return record

    logging.setLogRecordFactory(make_named_record)
