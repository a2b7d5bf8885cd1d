"""How objects of some types travel to worker processes, where that is not what their ``__reduce__`` says.

``__reduce__`` answers every pickler: ``pickle``, ``multiprocessing``,
cloudpickle in another library. The process backend's pickler
(``_serialization``) looks a type up here first, as pickle's
``dispatch_table``: a ``@parallel`` function pickles by its name for
``pickle``, but reaches a worker as its function and options, the function of
a main script by value, since workers never run the script.

A module registers its types as it defines them (``_decorators``), so the
pickler knows them whichever of the two was imported first, without
importing that module (a worker needs no decorators).
"""

from __future__ import annotations

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FunctionType
    from typing import Any

__all__ = ["for_worker_functions", "for_workers"]

#: By exact type, as pickle looks its dispatch table up: what an object of it pickles as for a worker
#: (a reduction, as ``__reduce__`` returns). The process backend's pickler adds cloudpickle's own as it
#: is made (``_serialization._pickler_class``), so that one dict serves both.
for_workers: dict[type, Callable[[Any], Any]] = {}

#: By the ``id`` of a code object: what a function made of it (a decorator's wrapper, one closure of
#: that code per decorated function: ``@profiled``'s) pickles as for a worker, where its module does
#: not hold it under its name. Looked up by type, every function is one: its code tells the wrappers
#: apart. By ``id``, not by the code itself, whose hash reads all its bytecode and constants: hashed
#: for each function pickled, an ordinary function's pickle took 10% longer. The codes kept are
#: constants of the decorator's module, alive as long as the process: no other code takes their ids.
for_worker_functions: dict[int, Callable[[FunctionType], Any]] = {}
