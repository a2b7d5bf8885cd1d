"""Context variables that travel to worker processes, for those who ask.

Threads run each task in a copy of the submitter's whole ``contextvars``
context. A worker process cannot: a ``ContextVar`` cannot be pickled, and most
values in a context have no business crossing. So it is an opt-in:
``configure(process_contextvars=[request_id, ...])`` names the variables; each
process task then carries the values they have in the submitter's context, and
the worker sets them, in a fresh context, before it calls the function.

A variable is found in the worker the way pickle finds a class: as a global of
an importable module, located once, when configured. A function sent by value
(a lambda, a function of the ``__main__`` script) that uses a variable carries
it the same way, by module and name, whether or not it is configured. With none configured
(the default) the round trip carries nothing more and costs one test.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from contextvars import Context, ContextVar

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    Located: TypeAlias = tuple[tuple[ContextVar[Any], str, str], ...]  # (variable, module, attribute)

__all__ = [
    "apply_values",
    "capture_values",
    "load_contextvar",
    "locate_contextvars",
    "reduce_contextvar",
    "set_process_contextvars",
]


_sent: Located = ()


def locate_contextvars(variables: Iterable[ContextVar[Any]]) -> Located:
    """Find each variable as a module global, so that a worker can import it.

    Raises:
        TypeError: an item is not a ``contextvars.ContextVar``.
        ValueError: a variable is not a global of any imported module other
            than ``__main__``.
    """
    located = []
    for variable in list(variables):
        if not isinstance(variable, ContextVar):
            raise TypeError(
                f"process_contextvars must hold contextvars.ContextVar objects, got {variable!r}"
            )
        located.append((variable, *_where(variable)))
    return tuple(located)


def _where(variable: ContextVar[Any]) -> tuple[str, str]:
    modules = [(name, module) for name, module in list(sys.modules.items()) if name != "__main__"]
    for name, module in modules:  # the usual case: the global has the variable's name
        if getattr(module, variable.name, None) is variable:
            return name, variable.name
    for name, module in modules:
        for attribute, value in list(getattr(module, "__dict__", {}).items()):
            if value is variable:
                return name, attribute
    raise ValueError(
        f"the context variable {variable.name!r} is not a global of any imported module; "
        "a worker process finds a variable by its module and name, so define it at the "
        "top level of an importable module (not the __main__ script)"
    )


def set_process_contextvars(located: Located) -> None:
    """Send these variables with every process task from now on (``()``: none)."""
    global _sent
    _sent = located


def capture_values(context: Context | None) -> tuple[tuple[str, str, Any], ...] | None:
    """The configured variables' values in ``context``, or ``None`` when none are configured."""
    if not _sent or context is None:
        return None
    return tuple((module, attribute, context[variable]) for variable, module, attribute in _sent if variable in context)


def apply_values(values: tuple[tuple[str, str, Any], ...]) -> None:
    """In a worker: set each variable (run this inside the task's own context)."""
    import importlib  # here: the parent imports this module for every first task, and needs none

    for module, attribute, value in values:
        getattr(importlib.import_module(module), attribute).set(value)


def reduce_contextvar(variable: ContextVar[Any]) -> tuple[Any, tuple[str, str]]:
    """Pickle ``variable`` by its module and name (a ``ContextVar`` cannot be pickled itself).

    Raises:
        ValueError: the variable is not a global of an importable module.
    """
    for located, module, attribute in _sent:
        if located is variable:
            return load_contextvar, (module, attribute)
    return load_contextvar, _where(variable)


def load_contextvar(module: str, attribute: str) -> ContextVar[Any]:
    """In a worker: the variable ``reduce_contextvar`` named."""
    import importlib

    return getattr(importlib.import_module(module), attribute)  # type: ignore[no-any-return]
