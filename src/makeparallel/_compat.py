"""makeparallel 0.2's names that this library does not offer as they were.

0.2 ran ``@parallel_priority`` tasks on a separate worker that had to be started
and stopped by hand. Here every pool orders its queue by priority, so there is
nothing to start; the calls stay, doing nothing, so that 0.2 code runs
unchanged. 0.2's caching, task dependencies and call timers are outside this
library's scope: looked up here, each raises an ``AttributeError`` that says
what to use instead (:func:`not_offered`). The migration guide
(``docs/migrating-from-0.2.md``) lists them all.
"""

from __future__ import annotations

__all__ = ["not_offered", "start_priority_worker", "stop_priority_worker"]

_CACHING = "caching is outside this library's scope: use functools.cache"
_DEPENDENCIES = "task dependencies are outside this library's scope: pass a result on, step2(h1.get())"
_TIMING = "@makeparallel.profiled counts and times calls: makeparallel.get_metrics(name).total_tasks"

#: Each name of makeparallel 0.2 not offered here, with what to use instead (the package's
#: ``_NOT_OFFERED_FROM_0_2`` lists the same names).
_NOT_OFFERED = {
    "memoize": _CACHING,
    "memoize_fast": _CACHING,
    "retry_cached": _CACHING,
    "parallel_with_deps": _DEPENDENCIES,
    "ParallelWithDeps": _DEPENDENCIES,
    "timer": _TIMING,
    "CallCounter": _TIMING,
}


def not_offered(module: str, name: str) -> AttributeError:
    """The error for ``module.name``, a name of 0.2 that ``module`` lacks: it says what to use instead.

    Python's own message named only the name, so 0.2 code using ``mp.memoize``
    failed without a word of the migration. (``from makeparallel import
    memoize`` still raises Python's ``ImportError``, which drops this message.)
    The package asks only for the names of :data:`_NOT_OFFERED`: its error for
    any other imports nothing, as it may be asked while the interpreter tears
    down imports.
    """
    return AttributeError(
        f"module {module!r} has no attribute {name!r}: makeparallel 0.2's {name} is not offered; "
        f"{_NOT_OFFERED[name]} (see docs/migrating-from-0.2.md)"
    )


def start_priority_worker() -> None:
    """Does nothing: priorities need no worker of their own (makeparallel 0.2 needed one).

    Every pool starts queued tasks by ``priority=``, highest first, from the
    first call on; remove the call when convenient.
    """


def stop_priority_worker() -> None:
    """Does nothing: see :func:`start_priority_worker`. Use ``shutdown()`` to stop work."""
