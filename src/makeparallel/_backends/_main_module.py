"""A worker's ``__main__``: a module of its own standing for the program's main script, which no worker runs.

``multiprocessing``'s ``spawn`` and ``forkserver`` run the main script again
in each worker (all but its ``if __name__ == "__main__":`` block) to have its
classes and functions by name; the pool's workers never run it (an unguarded
script would run again), and its functions travel by value instead. Their
code then found the template's own ``__main__``: a task that pickled an
instance of a class the script defines failed (``Can't pickle <class
'__main__.Point'>``), so did ``pickle.load`` of a file holding one, and
``__main__.__file__`` was missing. So each worker has a module of its own as
``__main__``, with the program's ``__file__``, which takes on the classes,
functions and other globals of the script that the functions sent to it
refer to, as they arrive (:func:`adopt`). What no function sent refers to is
not there.
"""

from __future__ import annotations

import builtins
import sys
from types import ModuleType

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["adopt", "main_file", "stand_in_for_main"]

_stand_in: ModuleType | None = None  # this worker's __main__, once set up


def main_file() -> str | None:
    """The program's ``__main__.__file__``; None where it has none (``python -c``, a REPL, a notebook)."""
    file = getattr(sys.modules.get("__main__"), "__file__", None)
    return file if isinstance(file, str) else None


def stand_in_for_main(file: str | None) -> None:
    """In a worker, as it is set up: make a module of its own ``__main__``, with the program's ``file``."""
    global _stand_in
    module = ModuleType("__main__")
    module.__builtins__ = builtins  # type: ignore[attr-defined]
    if file is not None:
        module.__file__ = file
    sys.modules["__main__"] = module
    _stand_in = module


def adopt(fn: Any) -> None:
    """Have this worker's ``__main__`` take on what ``fn``, a function of the main script sent by value, refers to.

    Names it has already keep their value: each function carries the globals
    it uses as they were when it was pickled. Does nothing outside a worker, or
    for a function of any other module.
    """
    main = _stand_in
    if main is None:
        return
    function = getattr(fn, "__func__", fn)  # a bound method's function
    namespace = getattr(function, "__globals__", None)
    if type(namespace) is not dict or namespace.get("__name__") != "__main__" or namespace is main.__dict__:
        return
    adopted = main.__dict__
    for name, value in namespace.items():
        if not (name.startswith("__") and name.endswith("__")):
            adopted.setdefault(name, value)
    defined: list[Any] = [function, type(getattr(fn, "__self__", None))]  # a bound method's class too
    for top_level in defined:
        name = getattr(top_level, "__name__", None)
        if isinstance(name, str) and getattr(top_level, "__module__", None) == "__main__":
            if getattr(top_level, "__qualname__", None) == name:
                adopted.setdefault(name, top_level)
