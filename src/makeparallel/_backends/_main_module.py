"""A worker's ``__main__``: a module of its own standing for the program's main script, which no worker runs.

``multiprocessing``'s ``spawn`` and ``forkserver`` run the main script again
in each worker (all but its ``if __name__ == "__main__":`` block) to have its
classes and functions by name; the pool's workers never run it (an unguarded
script would run again), and its functions travel by value instead. Their
code then found the template's own ``__main__``: a task that pickled an
instance of a class the script defines failed (``Can't pickle <class
'__main__.Point'>``), so did ``pickle.load`` of a file holding one, and
``__main__.__file__`` was missing. So each worker has a module of its own as
``__main__``, named as the program's (its ``__file__``, and its module's name
under ``python -m``), which takes on the classes and functions of the script
that the functions sent to it refer to, as they arrive (:func:`adopt`), and
finds those the arguments brought (:func:`_rebuilt_class`). Nothing else of
the script is there.

A ``spawn`` or ``forkserver`` pool a task makes runs the script again from
those names in its children, as it would from the program: without the
module's name, a script run with ``python -m`` was run as a file there, and
its relative imports failed in every child.
"""

from __future__ import annotations

import builtins
import sys
from importlib.machinery import ModuleSpec
from types import FunctionType, ModuleType

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["adopt", "main_script", "stand_in_for_main"]

_stand_in: ModuleType | None = None  # this worker's __main__, once set up


def main_script() -> tuple[str | None, str | None]:
    """The program's ``__main__.__file__`` and module name (``__spec__.name``), each None where it has none.

    No file for ``python -c``, a REPL or a notebook, nor for a script read
    from standard input (``"<stdin>"``: a ``spawn`` pool's children looked
    for a file of that name, and failed, without end). A module name only
    under ``python -m`` and for a zip application.
    """
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    return _file_named(getattr(main, "__file__", None)), name if isinstance(name, str) else None


def _file_named(file: object) -> str | None:
    """``file``, a ``__file__``, where it names a file: not ``"<stdin>"`` or the like."""
    if not isinstance(file, str) or (file.startswith("<") and file.endswith(">")):
        return None
    return file


def stand_in_for_main(file: str | None, name: str | None) -> None:
    """In a worker, as it is set up: make a module of its own ``__main__``, named as :func:`main_script` says."""
    global _stand_in
    module = ModuleType("__main__")
    module.__builtins__ = builtins  # type: ignore[attr-defined]
    if file is not None:
        module.__file__ = file
    if name is not None:
        module.__spec__ = ModuleSpec(name, None, origin=file)
    module.__dict__["__getattr__"] = _rebuilt_class  # asked only for what is not there (PEP 562)
    sys.modules["__main__"] = module
    _stand_in = module


def _rebuilt_class(name: str) -> Any:
    """The stand-in ``__main__``'s module ``__getattr__``: the script's class ``name`` that cloudpickle rebuilt here.

    A class of the script that arrived with an argument, not named by the
    function sent (:func:`adopt` takes on only those): a task that pickled
    its argument (``pickle.dumps(value)``, a cache file) failed with
    ``attribute lookup Point on __main__ failed``, where every
    ``multiprocessing`` pool's task has the script's classes. cloudpickle
    keeps each class it rebuilds, by the id the program's side gave it; the
    latest one of that name wins, as in :func:`adopt`.

    Raises:
        AttributeError: no class of that name was rebuilt here, as for any
            module attribute that is not there.
    """
    module = sys.modules.get("cloudpickle.cloudpickle")
    tracked = getattr(module, "_DYNAMIC_CLASS_TRACKER_BY_ID", None)
    # valuerefs() copies the references at once: another thread may unpickle a class meanwhile.
    for reference in reversed(tracked.valuerefs() if tracked is not None else []):
        rebuilt = reference()
        if getattr(rebuilt, "__module__", None) == "__main__" and getattr(rebuilt, "__qualname__", None) == name:
            return rebuilt
    raise AttributeError(f"module '__main__' has no attribute {name!r}")


def adopt(fn: Any) -> None:
    """Have this worker's ``__main__`` take on the script's classes and functions that ``fn``, sent by value, refers to.

    Only those defined in the script the program runs (``fn``'s file is its
    ``__main__``'s): a launcher's ``runpy.run_module`` or ``exec`` runs
    another file as ``__main__``, whose functions the program's ``__main__``
    does not have either, so they still travel by value there. Only classes
    and functions, the definitions pickle looks up by name: a value (a
    setting, a connection) the initializer or a task put in ``__main__``
    stays, and one no function put there is missing, not a stale copy. The
    one sent last wins, as the program's ``__main__`` holds its latest
    definitions: a notebook cell run again defines its class anew, and a
    task of the new cell pickled an instance of it against the old one.
    The functions keep their own globals. Does nothing outside a worker.
    """
    main = _stand_in
    if main is None:
        return
    function = getattr(fn, "__func__", fn)  # a bound method's function
    namespace = getattr(function, "__globals__", None)
    if (
        type(namespace) is not dict
        or namespace.get("__name__") != "__main__"
        or _file_named(namespace.get("__file__")) != getattr(main, "__file__", None)
    ):
        return
    adopted = main.__dict__
    defined: list[Any] = [*namespace.values(), function, type(getattr(fn, "__self__", None))]  # a method's class
    for value in defined:
        name = getattr(value, "__name__", None)
        if isinstance(value, (type, FunctionType)) and getattr(value, "__module__", None) == "__main__":
            if isinstance(name, str) and getattr(value, "__qualname__", None) == name:
                adopted[name] = value
