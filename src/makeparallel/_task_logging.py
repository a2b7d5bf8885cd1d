"""Logging with task context: every record emitted inside a task says which task.

Records get three attributes: ``task_id`` and ``task_name`` (``None`` outside a
task) and ``task_metadata`` (a dict, empty outside a task). Use them in a format
string (``"%(task_id)s %(task_name)s %(message)s"``) or a JSON formatter.

* :func:`enable_task_logging` sets them on every record, wherever it is logged:
  it wraps the log record factory.
* :class:`TaskContextFilter` does the same for the handlers you attach it to.
* :func:`add_task_context` is the same as a structlog processor.

Records logged inside worker processes carry their task's id and name from the
worker and its metadata from the parent, which emits them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from typing import Any

from ._task_context import current_task

__all__ = ["TaskContextFilter", "add_task_context", "enable_task_logging"]


def _context() -> tuple[int | None, str | None, dict[str, Any]]:
    task = current_task()
    if task is None:
        return None, None, {}
    metadata = getattr(task, "_metadata", None)  # a worker's stand-in has none
    return task.get_task_id(), getattr(task, "name", None), dict(metadata or {})


_KEYS = ("task_id", "task_name", "task_metadata")


def _stamp(record: logging.LogRecord) -> None:
    """Set each of the three attributes the record lacks (or has as ``None``).

    One it has is kept: stamped in the worker process it came from, or an
    ``extra`` of the caller's (``extra={"task_id": ...}``), which wins, as it
    does in :func:`add_task_context`.
    """
    attributes = record.__dict__
    task_id, task_name, task_metadata = _context()
    if attributes.get("task_id") is None:
        attributes["task_id"] = task_id
    if attributes.get("task_name") is None:
        attributes["task_name"] = task_name
    if attributes.get("task_metadata") is None:
        attributes["task_metadata"] = task_metadata


class _RecordAttributes(dict[str, Any]):
    """A stamped record's ``__dict__``, in which the task context does not count as set.

    ``Logger.makeRecord`` sets the ``extra`` of a logging call after the record
    factory made the record, and refuses a key the record's ``__dict__``
    already holds (``KeyError: Attempt to overwrite 'task_id' in LogRecord``),
    so that, stamped by the factory, a ``log.info(..., extra={"task_id": ...})``
    anywhere in the program raised at the call. Formatters read the
    attributes from the ``__dict__`` (``%(task_id)s``), so they must be in it.
    """

    __slots__ = ()

    def __contains__(self, key: object) -> bool:
        return key not in _KEYS and dict.__contains__(self, key)


class TaskContextFilter(logging.Filter):
    """Adds ``task_id``, ``task_name`` and ``task_metadata`` to each record; drops none."""

    def filter(self, record: logging.LogRecord) -> bool:
        _stamp(record)
        return True


_enabled = False


def enable_task_logging() -> None:
    """Give every log record from now on its task context (idempotent).

    An ``extra`` of the same name in a logging call
    (``log.info(..., extra={"task_id": job.id})``) replaces that attribute;
    the other two are still the task's.
    """
    global _enabled
    if _enabled:
        return
    make_record: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()

    def make_stamped_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        _stamp(record)
        record.__dict__ = _RecordAttributes(record.__dict__)  # an ``extra`` of these names may replace them
        return record

    logging.setLogRecordFactory(make_stamped_record)
    _enabled = True


def add_task_context(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: adds ``task_id``, ``task_name`` and ``task_metadata`` inside tasks."""
    task_id, task_name, metadata = _context()
    if task_id is not None:
        event_dict.setdefault("task_id", task_id)
        event_dict.setdefault("task_name", task_name)
        if metadata:
            event_dict.setdefault("task_metadata", metadata)
    return event_dict
