"""Tasks that raise errors this process cannot unpickle: they hold a class of a module only the worker imports.

The module, ``errors_of_the_workers``, is written to a folder that only the
worker puts on ``sys.path``; it stays there while the error is pickled (taken
off, its class would travel by value and be read here). Apart from the tests
so that a worker does not import pytest to run them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

MODULE_SOURCE = "class PluginError(Exception):\n    pass\n"
HOWS = ("itself", "cause", "context", "attribute", "member")
# How the worker's error is described ("Type: message"), for each of HOWS.
DESCRIPTIONS = {
    "itself": "PluginError: no licence",
    "cause": "ValueError: outer",
    "context": "ValueError: outer",
    "attribute": "ValueError: outer",
    "member": "ExceptionGroup: outer (2 sub-exceptions)",
}


def write_module(folder: str) -> None:
    (Path(folder) / "errors_of_the_workers.py").write_text(MODULE_SOURCE)


def _plugin_error(folder: str) -> Any:
    if folder not in sys.path:
        sys.path.append(folder)
    from errors_of_the_workers import PluginError  # type: ignore[import-not-found]

    return PluginError


def _group_type() -> Any:
    if sys.version_info >= (3, 11):
        import builtins

        return vars(builtins)["ExceptionGroup"]
    from exceptiongroup import ExceptionGroup  # the backport

    return ExceptionGroup


def raise_worker_only(folder: str, how: str) -> None:
    """Raise an error that holds a ``PluginError``: as itself, its cause, its context, an attribute, a group's member."""
    plugin_error = _plugin_error(folder)
    if how == "itself":
        raise plugin_error("no licence")
    if how == "cause":
        raise ValueError("outer") from plugin_error("no licence")
    if how == "context":
        try:
            raise plugin_error("no licence")
        except plugin_error:
            raise ValueError("outer")  # its context is the point
    if how == "attribute":
        error = ValueError("outer")
        error.plugin = plugin_error("no licence")  # type: ignore[attr-defined]
        raise error
    raise _group_type()("outer", [plugin_error("no licence"), KeyError("k")])


def raise_worker_only_at_item_one(folder: str, how: str, index: int) -> int:
    """A map's function: item 1 raises as :func:`raise_worker_only`, the others give their index."""
    if index == 1:
        raise_worker_only(folder, how)
    return index
