"""Pickling between processes: by reference where possible, by value where not.

* A ``@parallel`` function travels as a reference (module and qualified name);
  the worker imports the module and takes the undecorated function from the
  decorator. Plain pickle cannot do this: the name points at the decorator, not
  at the function.
* Everything pickle cannot send by reference (lambdas, closures, functions of
  ``__main__``) goes by value, through cloudpickle.
* Exceptions of your own classes are rebuilt without calling ``__init__``, so a
  custom signature survives the trip.
* Large buffers (``bytearray``, ``memoryview``, NumPy arrays, and ``bytes``
  passed as an argument or returned as a result) travel out of band (pickle
  protocol 5): sent as they are, not copied into the pickle stream.
"""

from __future__ import annotations

import functools
import io
import pickle
import sys
import weakref
from types import FunctionType
from typing import Any

from ._decorators import ParallelFunction

__all__ = ["RemoteTraceback", "dumps", "dumps_function", "large_bytes_out_of_band", "loads"]

_OUT_OF_BAND_MIN = 64 * 1024  # smaller buffers are cheaper in band


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process, as text.

    Set as ``__cause__`` of the exception that ``get()`` raises, so that the
    printed traceback shows where the task failed in the worker.
    """

    def __str__(self) -> str:
        return "\n" + str(self.args[0]) if self.args else ""


class _LargeBytes:
    """A large ``bytes`` object, sent out of band like a ``bytearray``.

    Pickle writes ``bytes`` into its stream by itself, without asking us; wrapped
    in this, it travels as a buffer instead and comes back as ``bytes``.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (bytes, (pickle.PickleBuffer(self.data),))


def large_bytes_out_of_band(value: Any) -> Any:
    """``value`` wrapped to travel out of band if it is a large ``bytes``, else itself."""
    if type(value) is bytes and len(value) >= _OUT_OF_BAND_MIN:
        return _LargeBytes(value)
    return value


def dumps(obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle ``obj``; return the stream and the buffers sent out of band."""
    buffers: list[pickle.PickleBuffer] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        if buffer.raw().nbytes < _OUT_OF_BAND_MIN:
            return True  # in band
        buffers.append(buffer)
        return False

    stream = io.BytesIO()
    _pickler_class()(stream, protocol=5, buffer_callback=out_of_band).dump(obj)
    return stream.getvalue(), buffers


@functools.cache
def _pickler_class() -> type[pickle.Pickler]:
    import cloudpickle  # type: ignore[import-untyped]  # only the process backend needs it

    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        def reducer_override(self, obj: Any) -> Any:
            reduced = _reduce(obj)
            return super().reducer_override(obj) if reduced is NotImplemented else reduced

    return Pickler


def dumps_function(fn: Any) -> bytes:
    """Pickle a task's function, once: later calls reuse the bytes.

    Only plain functions without a closure are cached: their pickle cannot
    change, except for the globals a function sent by value carries, which stay
    as they were the first time (like the standard library's pools, whose
    workers never see later changes either). Closures, bound methods and other
    callables, whose state may change between calls, are pickled every time.
    """
    cacheable = type(fn) is FunctionType and fn.__closure__ is None
    if cacheable:
        cached = _functions.get(fn)
        if cached is not None:
            return cached
    stream = io.BytesIO()
    _pickler_class()(stream, protocol=5).dump(fn)
    data = stream.getvalue()
    if cacheable:
        _functions[fn] = data
    return data


_functions: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()


def loads(data: bytes, buffers: list[Any]) -> Any:
    """Unpickle what :func:`dumps` made."""
    return pickle.loads(data, buffers=buffers)


def _reduce(obj: Any) -> Any:
    if isinstance(obj, FunctionType):
        reference = _parallel_reference(obj)
        return NotImplemented if reference is None else (_undecorated, reference)
    if isinstance(obj, BaseException) and type(obj).__module__ != "builtins":
        return (_rebuild_exception, (type(obj), obj.args, getattr(obj, "__dict__", {})))
    if isinstance(obj, memoryview) and obj.contiguous:
        return (memoryview, (pickle.PickleBuffer(obj),))
    return NotImplemented


def _parallel_reference(fn: FunctionType) -> tuple[str, str] | None:
    """``(module, qualname)`` if that name holds a @parallel wrapper of ``fn``."""
    target: Any = sys.modules.get(fn.__module__)
    if target is None or fn.__module__ == "__main__":
        return None
    for part in fn.__qualname__.split("."):
        target = getattr(target, part, None)
    if isinstance(target, ParallelFunction) and target.__wrapped__ is fn:
        return fn.__module__, fn.__qualname__
    return None


def _undecorated(module: str, qualname: str) -> Any:
    import importlib

    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target.__wrapped__


def _rebuild_exception(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    error = cls.__new__(cls)
    error.args = args
    if state:
        error.__dict__.update(state)
    return error
