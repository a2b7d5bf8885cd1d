"""The interpreter settings a program changes as it runs, which each worker takes on as it starts.

A script sets them at its top: ``sys.setrecursionlimit`` for a deep
recursion, ``warnings.filterwarnings("ignore", ...)`` for a library's noise,
``sys.set_int_max_str_digits`` for huge integers, ``sys.dont_write_bytecode``
for a read-only install, ``faulthandler.enable()`` for a crash's traceback,
``logging.captureWarnings(True)`` for warnings as log records. ``multiprocessing``'s
workers have them, from the fork or by running the main module again
(``spawn``); a worker forked from the template, or a fresh interpreter, had
the defaults, and a task raised ``RecursionError`` or ``ValueError``, or
printed the warning the program silenced (or logged), or wrote bytecode, or
died of a segmentation fault with no traceback, in every worker. The pool sends
them with each worker's set-up (:func:`current`), as they are when it starts,
and the worker takes them on (:func:`take_on`) before its initializer. The
warning filters are the program's as they stood when a task was last submitted:
the pool sends them again when they change (``warnings.catch_warnings()``
entered or left, a filter added), with ``sys.path`` (:func:`take_filters`);
a worker started inside a ``catch_warnings()`` block kept its filters for
good, and tasks failed on warnings the program had made errors only for
that block.

The warning filters travel as plain data (their patterns as text, their
categories by module and name): the interpreter's own filters compile a
pattern, and unpickling one imports ``re`` (a few milliseconds on every
worker's start). A worker whose filters are already the program's (the
usual case: both started with the same options) changes nothing. A
category's module is imported in the worker as it takes the filter (as
``spawn``'s workers import it, running the main module again): a filter
of a library's warning costs each worker that library's import. A filter
whose category it cannot import (a class of ``__main__``, a module that
fails to import) is left out.
"""

from __future__ import annotations

import sys
import warnings

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    Filter = tuple[str, "str | None", tuple[str, str], "str | None", int]
    Settings = tuple[int, "int | None", list[Filter], bool, bool, bool]

__all__ = ["current", "take_filters", "take_on", "warning_filters"]


def current(filters: list[Filter]) -> Settings:
    """This interpreter's recursion limit, limit of digits in ``int``-``str`` conversions, ``filters``, and three switches.

    The switches: ``sys.dont_write_bytecode``, whether ``faulthandler`` is
    enabled, and whether ``logging`` captures warnings (``captureWarnings``).

    ``filters``: the warning filters as :func:`warning_filters` gave them
    when the last task was submitted, not as they are now: a worker started
    inside a ``catch_warnings()`` block took the block's, and kept them once
    the program had left it (the block puts back the very list it replaced,
    so the next submission saw nothing change).
    """
    digits = getattr(sys, "get_int_max_str_digits", None)  # Python 3.11, and 3.10.7 on
    faulthandler = sys.modules.get("faulthandler")  # not imported: not enabled
    logging = sys.modules.get("logging")
    return (
        sys.getrecursionlimit(),
        None if digits is None else digits(),
        filters,
        sys.dont_write_bytecode,
        faulthandler is not None and faulthandler.is_enabled(),
        logging is not None and warnings.showwarning is getattr(logging, "_showwarning", None),
    )


def take_on(settings: Settings) -> None:
    """Make ``settings`` (what :func:`current` gave in the program) this worker's.

    ``faulthandler`` writes to this worker's standard error, descriptor 2,
    which is the program's (a file the program gave ``enable()`` is not).
    """
    recursion_limit, digits, filters, dont_write_bytecode, fault_handler, warnings_logged = settings
    if sys.getrecursionlimit() != recursion_limit:
        sys.setrecursionlimit(recursion_limit)
    if digits is not None and hasattr(sys, "set_int_max_str_digits") and sys.get_int_max_str_digits() != digits:
        sys.set_int_max_str_digits(digits)
    sys.dont_write_bytecode = dont_write_bytecode
    if fault_handler or "faulthandler" in sys.modules:  # imported by -X faulthandler, which the program may have undone
        import faulthandler

        if fault_handler and not faulthandler.is_enabled():
            faulthandler.enable(file=2)
        elif not fault_handler and faulthandler.is_enabled():
            faulthandler.disable()
    if warnings_logged:
        import logging  # its records are the program's to handle (_worker_logging)

        logging.captureWarnings(True)
    take_filters(filters)


def take_filters(filters: list[Filter]) -> None:
    """Make ``filters`` (what :func:`warning_filters` gave in the program) this worker's warning filters."""
    if warning_filters() != filters:
        _set_filters(filters)


def warning_filters() -> list[Filter]:
    """``warnings.filters`` as plain data: what ``filterwarnings`` would take to make each."""
    plain: list[Filter] = []
    for action, message, category, module, lineno in warnings.filters:
        if isinstance(category, type):
            pattern: Any = getattr(message, "pattern", message)
            where: Any = getattr(module, "pattern", module)
            plain.append((action, pattern, (category.__module__, category.__qualname__), where, lineno))
    return plain


def _set_filters(filters: list[Filter]) -> None:
    """Make ``filters`` (plain data, :func:`warning_filters`) the warning filters, first one first."""
    warnings.resetwarnings()
    for action, message, (module_name, qualname), module, lineno in reversed(filters):
        category = _category(module_name, qualname)
        if category is None:
            continue
        try:
            warnings.filterwarnings(action, message or "", category, module or "", lineno)  # type: ignore[arg-type]
        except (TypeError, ValueError, AssertionError):  # AssertionError: Python 3.10 checks its arguments so
            continue


def _category(module_name: str, qualname: str) -> Any:
    """The warning class ``module_name.qualname``, imported; None where it cannot be (a class of ``__main__``)."""
    import importlib

    if module_name == "__main__":
        return None
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except BaseException:  # a module this worker cannot import, or one that exits as it is imported
        return None
    return found if isinstance(found, type) and issubclass(found, Warning) else None
