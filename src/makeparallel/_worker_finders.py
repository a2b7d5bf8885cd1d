"""Which of this process's import finders the process workers have too.

Whether a worker imports a function's module by name depends on its
``sys.meta_path``, not on this process's: a finder the program installs as it
runs (a notebook importer such as ``import_ipynb``, ``pyximport.install()``, a
plugin loader's) is not in a worker, which never runs the program's code, and
a module only such a finder finds fails to import there
(``ModuleNotFoundError``): its functions must travel by value. The finders a
worker has are those its interpreter's start-up installed (``site``, ``.pth``
files: an editable install's) and its initializer's; each worker says which
as it becomes ready (:func:`installed`), and :func:`take` keeps the last
answer. Until one did, a finder counts as the workers' unless its class is
the main script's, which no worker runs.
"""

from __future__ import annotations

import sys

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["installed", "take", "the_workers"]

#: The workers' finders, by class (module, qualified name), as the last worker to get ready said; None before.
_theirs: frozenset[tuple[str, str]] | None = None


def _identity(finder: Any) -> tuple[str, str]:
    """A finder's class as (module, qualified name): a class itself for the standard ones (``PathFinder``)."""
    kind = finder if isinstance(finder, type) else type(finder)
    return str(getattr(kind, "__module__", "")), str(getattr(kind, "__qualname__", ""))


def installed() -> list[tuple[str, str]]:
    """This process's finders (``sys.meta_path``), by class: what a worker reports as it becomes ready."""
    return [_identity(finder) for finder in sys.meta_path]


def take(finders: list[tuple[str, str]]) -> bool:
    """Keep ``finders``, what a worker reported (:func:`installed`).

    Returns whether that changed which of this process's finders the workers
    lack: only then may a module be judged otherwise. (Asked again, each
    module would be looked for again, also in folders this process may no
    longer read, after it dropped its privileges.)
    """
    global _theirs
    theirs = frozenset((str(module), str(name)) for module, name in finders)
    if theirs == _theirs:
        return False
    lacking = [finder for finder in sys.meta_path if not the_workers(finder)]
    _theirs = theirs
    return [finder for finder in sys.meta_path if not the_workers(finder)] != lacking


def the_workers(finder: Any) -> bool:
    """Whether the workers have ``finder`` on their ``sys.meta_path`` (a finder of its class)."""
    identity = _identity(finder)
    if _theirs is None:
        return identity[0] != "__main__"
    return identity in _theirs
