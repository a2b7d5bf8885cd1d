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
import weakref
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
    functions keep their own globals.

    One object for each definition, as in the program: each function sent by
    value brings its own copy of the script's functions it uses (one per
    pickle), and ``__main__`` held the copy that came last; a task whose
    function came earlier gave its own copy to a ``multiprocessing`` pool,
    which pickles it by name, and failed (``it's not the same object as
    __main__.square``), on whichever worker had run the other function
    first. So a copy of a function ``__main__`` holds already, the same
    code and defaults, is replaced by that one in the globals it came with.
    A definition that differs (a notebook cell run again), and ``fn``
    itself, which a task may hand on as it is, are the latest: they take
    the name in ``__main__`` and in the globals of every function that came
    before, as the program's ``__main__`` holds its latest definitions.
    Does nothing outside a worker.
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
    changed = False
    refreshed: list[dict[str, Any]] = []
    # fn and a method's class first: the latest, whatever the copies among its globals.
    for value in (function, type(getattr(fn, "__self__", None)), *namespace.values()):
        name = _definition_name(value)
        if name is None:
            continue
        held = adopted.get(name)
        if held is value:
            continue
        if value is not function and _same_function(held, value):
            refreshed.append(held.__globals__)  # type: ignore[union-attr]  # a function: _same_function
            continue
        adopted[name] = value
        changed = True
    for globals_held in refreshed:
        # The function held now runs for the copy, with the values of the copy's pickle, the
        # latest: a task's function that calls it sees the globals as they were when it was sent.
        if globals_held is not namespace:
            globals_held.update((k, v) for k, v in namespace.items() if not (k.startswith("__") and k.endswith("__")))
            _held_by_main(globals_held, adopted)
    _held_by_main(namespace, adopted)
    if changed:
        for earlier in list(_arrived):
            _held_by_main(earlier.__globals__, adopted)
    _arrived.add(function)


# The functions adopt() was given, whose globals name the script's definitions: a weak set,
# as the worker forgets them (_serialization.load_function keeps a bounded number).
_arrived: weakref.WeakSet[FunctionType] = weakref.WeakSet()


def _definition_name(value: object) -> str | None:
    """The name of ``value`` where it is a class or function defined at the top of the script, which pickle finds by name."""
    if isinstance(value, (type, FunctionType)) and getattr(value, "__module__", None) == "__main__":
        name = getattr(value, "__name__", None)
        if isinstance(name, str) and getattr(value, "__qualname__", None) == name:
            return name
    return None


def _held_by_main(namespace: dict[str, Any], adopted: dict[str, Any]) -> None:
    """Have the script's definitions ``namespace`` holds be the ones ``__main__`` (``adopted``) holds."""
    for key, value in list(namespace.items()):
        name = _definition_name(value)
        held = adopted.get(name) if name is not None else None
        if held is not None and held is not value:
            namespace[key] = held


def _same_function(held: object, copy: object, depth: int = 0) -> bool:
    """Whether ``copy`` is a function defined as ``held`` is: the same code, defaults, attributes and closure.

    Their own globals are not compared: each copy's are those of its pickle.
    A function among those (a decorator's ``__wrapped__``, a closure's cell)
    compares as a function, to a few levels.
    """
    if type(held) is not FunctionType or type(copy) is not FunctionType or depth > 3:
        return False
    if held.__code__ != copy.__code__:
        return False
    pairs: list[tuple[Any, Any]] = [
        (held.__defaults__ or (), copy.__defaults__ or ()),
        (held.__kwdefaults__ or {}, copy.__kwdefaults__ or {}),
        (held.__dict__, copy.__dict__),
    ]
    try:
        pairs.append((_cell_contents(held), _cell_contents(copy)))
        return all(_same_value(a, b, depth) for a, b in pairs)
    except Exception:  # noqa: BLE001  # an empty cell, an == that raises (an array): not known to be the same
        return False


def _cell_contents(function: FunctionType) -> tuple[Any, ...]:
    return tuple(cell.cell_contents for cell in function.__closure__ or ())


def _same_value(held: Any, copy: Any, depth: int) -> bool:
    if held is copy:
        return True
    if type(held) is FunctionType:
        return _same_function(held, copy, depth + 1)
    if type(held) is not type(copy):
        return False
    if type(held) is tuple:
        return len(held) == len(copy) and all(_same_value(a, b, depth) for a, b in zip(held, copy))
    if type(held) is dict:
        return held.keys() == copy.keys() and all(_same_value(held[k], copy[k], depth) for k in held)
    return (held == copy) is True
