"""A worker's log records go to the parent, whose handlers emit them.

Imported by a worker only once ``logging`` is (``_process_worker``): most
tasks never log, and ``logging`` with what it imports (``re``, ``traceback``,
``string``) was the largest import of a cold worker before its first task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .._task_logging import _stamp

__all__ = ["forward_records"]


class _ForwardingHandler(logging.Handler):
    """Sends each log record to the parent, whose handlers then emit it."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _stamp(record)  # the task's id and name, known here; the parent adds metadata
            attributes = dict(record.__dict__)
            attributes["msg"] = record.getMessage()
            attributes["args"] = None
            if record.exc_info:
                attributes["exc_text"] = logging.Formatter().formatException(record.exc_info)
            attributes["exc_info"] = None
            self._send(("log", attributes))
        except Exception:
            self.handleError(record)


def forward_records(send: Callable[[tuple[Any, ...]], None]) -> None:
    """Send every record logged in this process with ``send``, whatever its level.

    The root logger is set to DEBUG: the parent's loggers decide, as they are
    configured at the time, which records to emit.
    """
    root = logging.getLogger()
    root.handlers[:] = [_ForwardingHandler(send)]
    root.setLevel(logging.DEBUG)
