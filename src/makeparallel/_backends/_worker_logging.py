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
from .._task_logging import _stamp

__all__ = ["forward_records"]

# What every record has, each a str, a number or None once the message is formatted
# (the task's id and name too); any other attribute is an ``extra`` (or a record
# factory's), which may be anything. The task's metadata is the parent's to add.
_PLAIN = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "task_id", "task_name"}
_LEFT_OUT = _PLAIN | {"task_metadata"}


class _ForwardingHandler(logging.Handler):
    """Sends each log record to the parent, whose handlers then emit it."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _stamp(record)  # the task's id and name, known here; the parent adds metadata
            attributes = {name: value for name, value in record.__dict__.items() if name in _PLAIN}
            attributes["msg"] = record.getMessage()
            attributes["args"] = None
            if record.exc_info:
                attributes["exc_text"] = logging.Formatter().formatException(record.exc_info)
            attributes["exc_info"] = None
            extras = {name: _packed(value) for name, value in record.__dict__.items() if name not in _LEFT_OUT}
            self._send(("log", attributes, extras))
        except Exception:
            self.handleError(record)


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
        text = str(value)
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
