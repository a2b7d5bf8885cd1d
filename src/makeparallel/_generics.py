"""Generic classes at run time without importing ``typing``.

``AsyncHandle`` and ``ParallelFunction`` are generic for type checkers. Their
modules load with the first ``@parallel``, and importing ``typing`` for their
bases was about 3 ms of it, before a cold process pool can start its template.
Type checkers read ``typing``'s names (imported under ``TYPE_CHECKING``); at run
time these stand in, and a generic class is subscripted as the standard
library's are (``queue.Queue[int]``): ``AsyncHandle[int]`` is a
``types.GenericAlias``.
"""

from __future__ import annotations

from types import GenericAlias

__all__ = ["Generic", "ParamSpec", "TypeVar"]


class Generic:
    """``class C(Generic[T])`` at run time: ``C`` derives from this, and ``C[int]`` is a ``GenericAlias``."""

    __slots__ = ()

    def __class_getitem__(cls, params: object) -> object:
        return cls if cls is Generic else GenericAlias(cls, params)


class TypeVar:
    """A type variable's name, all that ``Generic[...]`` needs of it at run time."""

    __slots__ = ("__name__",)

    def __init__(self, name: str, **_: object) -> None:
        self.__name__ = name

    def __repr__(self) -> str:
        return f"~{self.__name__}"


ParamSpec = TypeVar
