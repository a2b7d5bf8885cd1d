"""Pickling between processes: by reference where possible, by value where not.

* A ``@parallel`` function travels as a reference (module and qualified name);
  the worker imports the module and takes the undecorated function from the
  decorator. Plain pickle cannot do this: the name points at the decorator, not
  at the function. The decorator itself travels as that function and its
  options (:mod:`._worker_reductions`), not by its name as ``pickle`` sends it:
  one of the main script goes by value.
* Everything pickle cannot send by reference (lambdas, closures, functions of
  ``__main__``) goes by value, through cloudpickle. So do the functions and
  classes of a module that a worker could not import by name (imported through a
  ``sys.path`` entry removed since, or made without a file), and such a module
  itself where a function sent by value uses it (a sibling it imported):
  whatever the parent can call, a worker can run.
* A module loaded through a relative ``sys.path`` entry (``''``) goes by name,
  and workers import it (and every other module loaded so, and every
  namespace package and the modules loaded in it) from the folders it was
  loaded from, whatever their working directory and the parent's now
  (:data:`pins`).
* A function passed as an argument (the function of a map) is pickled once
  and unpickled once per worker, as a task's own function is: a worker keeps
  it, and the module globals it sets persist from one call to the next.
* Exceptions travel with their own pickling where it is faithful, rebuilt
  where not, and with their cause chain (:mod:`._remote_errors`).
* Large buffers travel out of band (pickle protocol 5): sent as they are, not
  copied into the pickle stream. That is ``memoryview`` and NumPy arrays, and
  ``bytes`` and ``bytearray``, anywhere in what is sent: an argument, an item
  of a map chunk, a field of an object, a result (:class:`_OutOfBandStream`).
"""

from __future__ import annotations

import functools
import io
import os
import _pickle  # pickle's C core: a worker need not import pickle.py (``_backends/_template``)
import struct
import sys
import threading
import weakref
from contextvars import ContextVar
from types import BuiltinFunctionType, CodeType, FunctionType, MethodType, ModuleType

from . import _at_fork_in_child, _worker_finders
from ._backends._main_module import adopt
from ._remote_errors import ExceptionsPickled, linked_errors, reduce_exception
from ._worker_reductions import for_worker_functions, for_workers

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection
    from typing import Any

    # A module as _pin_modules looked at it: its spec, its folders if pinned, and a top-level
    # namespace package's path then (_portions_now).
    _Examined = tuple[Any, tuple[str, ...] | None, tuple[Any, int] | None]

__all__ = [
    "Unreadable",
    "dumps",
    "dumps_function",
    "dumps_in_band",
    "imported_object",
    "list_length",
    "load_function",
    "loads",
    "loads_each",
    "objects_pickled",
    "wrap_argument",
]

_OUT_OF_BAND_MIN = 64 * 1024  # smaller buffers are cheaper in band
_SCALARS = frozenset({int, float, complex, bool, str, type(None)})  # any pickler writes these alike
_FUNCTIONS_KEPT = 256  # unpickled functions a worker keeps, by their pickled bytes
# ... and their pickled bytes at most: each closure over a large object is kept twice (its
# bytes and the object), so 256 closures of a map per request over one 30 MB model held 15 GB.
_FUNCTION_BYTES_KEPT = 32 * 1024 * 1024


class _SentFunction:
    """A function argument, pickled once (:func:`dumps_function`) and unpickled once per worker."""

    __slots__ = ("data",)
    _pickled_plainly = True  # its reduction: load_function and bytes (_PlainPickler)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (load_function, (self.data,))


def wrap_argument(value: Any) -> Any:
    """``value`` as it should travel: a function pickled once, anything else as it is."""
    if type(value) is FunctionType:
        return _SentFunction(dumps_function(value))
    return value


def dumps(obj: Any) -> tuple[bytes, list[Any]]:
    """Pickle ``obj``; return the stream and the buffers sent out of band (bytes-like objects).

    Each thread keeps one pickler and reuses it (clearing its memo): making a
    cloudpickle pickler costs ten times more than pickling a small call. A
    scalar goes through the plain C pickler, which writes it alike: a worker
    whose tasks return numbers and strings never imports cloudpickle (about
    17 ms on a cold worker's first result). So do built-in containers of
    them (a map chunk's items and results), until the thread meets something
    else (:class:`_PlainPickler`).

    The kept pickler is taken off the thread while it pickles: a pickle made
    inside this one on the same thread (a ``__reduce__`` that submits a
    process call) makes one of its own. Used again half-way, the kept one had
    its stream truncated and its memo cleared under the outer pickle, which
    then wrote a stream that named objects no longer memoized, or crashed the
    interpreter in the C pickler.
    """
    if type(obj) in _SCALARS:
        return _pickle.dumps(obj, protocol=5), []
    kept = getattr(_picklers, "kept", None)
    if kept is None:
        kept = _ReusablePickler()
    else:
        _picklers.kept = None
    pickled = kept.dumps(obj)  # raised: a pickler that failed half-way is not reused
    _picklers.kept = kept
    return pickled


# What stands, in a pickle stream, for a large bytes or bytearray sent out of band:
# the next buffer as it is (a bytearray, as the receiver reads it), or bytes(it).
# Pickle's opcodes, as ``pickle.py`` names them.
_NEXT_BUFFER, _TUPLE1, _REDUCE, _BINBYTES, _BINBYTES8, _BYTEARRAY8 = b"\x97", b"\x85", b"R", b"B", b"\x8e", b"\x96"
_TAKE_BYTEARRAY = _NEXT_BUFFER
_TAKE_BYTES = b"cbuiltins\nbytes\n" + _NEXT_BUFFER + _TUPLE1 + _REDUCE
_BYTES_HEADER = struct.Struct("<cI")  # BINBYTES: bytes under 4 GiB
_BYTES8_HEADER = struct.Struct("<cQ")  # BINBYTES8, BYTEARRAY8


_write = io.BytesIO.write


class _OutOfBandStream(io.BytesIO):
    """The file a pickler writes to, which takes large ``bytes`` and ``bytearray`` out of band.

    Pickle writes a bytes or bytearray into its stream itself, without asking
    ``reducer_override`` or a ``buffer_callback``, so a large one nested in a
    list, a tuple or an object's fields (a map chunk's items) would be copied
    into the stream, then copied again by every step that handles the stream.
    But CPython's picklers (the C one and the Python one alike, since 3.8)
    write a payload of 64 KiB or more to their file as the object itself,
    right after its opcode and length (``_Pickler_write_bytes`` in
    ``Modules/_pickle.c``, ``_Framer.write_large_bytes`` in ``pickle.py``).
    This file recognises that pair, keeps the object as an out-of-band buffer
    and writes, instead of the opcode, the protocol-5 opcodes that take the next
    buffer (and for bytes, ``bytes(buffer)``): the stream holds a few bytes, and
    the item is sent as it is. A pickler that ever wrote such payloads another
    way would only lose this shortcut, not correctness.
    """

    def __init__(self) -> None:
        super().__init__()
        self.buffers: list[Any] = []  # shared with the pickler's buffer_callback: one list, in stream order
        self.last: Any = b""  # the previous write: its end is the opcode of the payload that follows

    def write(self, data: Any) -> int:
        kind = type(data)
        if (kind is bytes or kind is bytearray) and len(data) >= _OUT_OF_BAND_MIN:
            header = self._header_before(kind, len(data))
            if header:
                self.seek(-header, io.SEEK_CUR)
                self.truncate()
                _write(self, _TAKE_BYTES if kind is bytes else _TAKE_BYTEARRAY)
                self.buffers.append(data)
                self.last = b""
                return len(data)
        self.last = data
        return _write(self, data)

    def _header_before(self, kind: type, size: int) -> int:
        """The length of the opcode and size of a ``kind`` payload of ``size`` bytes that ends the last write, or 0."""
        last = self.last
        if kind is bytearray:
            return _BYTES8_HEADER.size if last.endswith(_BYTES8_HEADER.pack(_BYTEARRAY8, size)) else 0
        if size <= 0xFFFFFFFF:
            return _BYTES_HEADER.size if last.endswith(_BYTES_HEADER.pack(_BINBYTES, size)) else 0
        return _BYTES8_HEADER.size if last.endswith(_BYTES8_HEADER.pack(_BINBYTES8, size)) else 0


class _NotPlain(Exception):
    """What :class:`_PlainPickler` raises at an object only the full pickler may write."""


class _PlainPickler(_pickle.Pickler):
    """The C pickler, for built-in values in built-in containers only: any pickler writes those alike.

    Tried first, until a process needs the full pickler (``_pickler_class``):
    importing cloudpickle costs a cold worker about 25 ms, and the first chunk
    of a map over numbers, and its results, never needed it. The C pickler
    writes ``None``, ``bool``, ``int``, ``float``, ``bytes``, ``str``,
    ``dict``, ``set``, ``frozenset``, ``list``, ``tuple``, ``bytearray`` and
    ``PickleBuffer`` (exact types) itself, before it asks ``reducer_override``
    or a dispatch table (``save`` in ``Modules/_pickle.c``); everything else
    reaches ``reducer_override``, which gives up here, but for ``range`` and
    ``complex`` (and their classes, by name), a module's C function, a
    module-level function of this package (by name), and an object of a
    class of this package marked ``_pickled_plainly`` in its own body (not
    inherited: a subclass may reduce otherwise), whose reduction holds
    only those (a map's function, pickled already: :class:`_SentFunction`; a
    chunk's numeric results: ``_crash_journal._Records``). The full pickler
    leaves all of them to their own reductions too.
    Where a later Python asked it about more, pickling would only fall back
    to the full pickler more often.
    """

    exceptions = None  # the full pickler's record of the exceptions met: this one meets none

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is range or kind is complex or obj is range or obj is complex:  # a chunk of a range
            return NotImplemented
        if kind is FunctionType and _named_here(obj):
            return NotImplemented
        # Read from the class's own namespace: getattr() would call a metaclass's __getattr__,
        # whose KeyError for a name it does not know (a registry's) failed the whole pickle.
        if kind.__dict__.get("_pickled_plainly") and kind.__module__.partition(".")[0] == __package__:
            return NotImplemented
        if kind is BuiltinFunctionType and type(obj.__self__) is ModuleType:
            return NotImplemented  # a module's C function, by reference, as in dumps_function
        raise _NotPlain


class _ReusablePickler:
    __slots__ = ("pickler", "stream")

    def __init__(self) -> None:
        self.stream = _OutOfBandStream()
        plain = not _pickler_class.cache_info().currsize  # else cloudpickle is here already: no try needed
        kind = _PlainPickler if plain else _pickler_class()
        self.pickler: Any = kind(self.stream, protocol=5, buffer_callback=self._out_of_band)

    def _out_of_band(self, buffer: _pickle.PickleBuffer) -> bool:
        if buffer.raw().nbytes < _OUT_OF_BAND_MIN:
            return True  # in band
        self.stream.buffers.append(buffer)
        return False

    def dumps(self, obj: Any) -> tuple[bytes, list[Any]]:
        try:
            return self._dumps(obj)
        except _NotPlain:  # the plain pickler met an object it cannot write: the full one from now on
            pass
        except RecursionError:  # nested too deep: the full pickler fails as it does (its PicklingError)
            if type(self.pickler) is not _PlainPickler:
                raise
        # Out of the except clauses: what the full pickler raises has no _NotPlain as its context.
        self.pickler = _pickler_class()(self.stream, protocol=5, buffer_callback=self._out_of_band)
        return self._dumps(obj)

    def _dumps(self, obj: Any) -> tuple[bytes, list[Any]]:
        stream = self.stream
        stream.seek(0)
        stream.truncate()
        buffers: list[Any] = []
        stream.buffers = buffers
        pickler = self.pickler
        try:
            pickler.dump(obj)
            return stream.getvalue(), buffers
        finally:
            # Keep no reference to what was sent. The memo, the exceptions met and the buffers
            # were cleared before the next pickle only: they kept the last call's arguments
            # (a large array sent out of band too) alive until this thread sent another.
            pickler.clear_memo()
            if pickler.exceptions is not None and pickler.exceptions.open:
                pickler.exceptions.clear()
            stream.buffers = []
            stream.last = b""


_picklers = threading.local()


@functools.cache
def _pickler_class() -> type[_pickle.Pickler]:
    from collections import ChainMap

    import cloudpickle  # type: ignore[import-untyped]  # only the process backend needs it

    make_class = getattr(cloudpickle.cloudpickle, "_make_skeleton_class", None)

    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.exceptions = ExceptionsPickled()

        def reducer_override(self, obj: Any) -> Any:
            if obj is load_function:  # in every call with a function argument: by name, at once
                return NotImplemented
            if isinstance(obj, BaseException):
                return reduce_exception(obj, self.exceptions)
            reduced = _reduce(obj)
            if reduced is not NotImplemented:
                return reduced
            reduced = super().reducer_override(obj)
            if type(reduced) is tuple and reduced[0] is make_class and vars(obj).get("__slots__"):
                return _with_slots(reduced, obj.__slots__)
            return reduced

    # Its dispatch table: the reductions for workers (a @parallel function's) and cloudpickle's
    # in one dict, then copyreg's, as cloudpickle chains them. One map more would cost each
    # object of a class of its own one failed lookup more.
    own, *after = cloudpickle.Pickler.dispatch_table.maps
    for kind, reduction in own.items():
        for_workers.setdefault(kind, reduction)
    if "lock" in vars(functools.cached_property(len)):  # Python 3.10 and 3.11
        for_workers.setdefault(functools.cached_property, _reduce_cached_property)
    Pickler.dispatch_table = ChainMap(for_workers, *after)
    return Pickler


def _reduce_cached_property(prop: functools.cached_property[Any]) -> Any:
    """A ``functools.cached_property`` made again from its function, with its ``attrname`` and ``__doc__``, and a lock of its own.

    Before Python 3.12 it holds an ``RLock``, which cannot be pickled: a class
    of the main script with one, sent by value, could not be sent at all, and
    every task that used it failed with "cannot pickle '_thread.RLock'
    object", where threads run it. ``attrname`` goes with the rest of its
    ``__dict__``: only a ``class`` statement sets it, and the worker's copy of
    the class is made without one.
    """
    return (functools.cached_property, (prop.func,), {k: v for k, v in vars(prop).items() if k != "lock"})


def _with_slots(reduced: tuple[Any, ...], slots: Any) -> tuple[Any, ...]:
    """cloudpickle's reduction of a class sent by value, made to create the class with its ``__slots__``.

    cloudpickle makes the class without them and sets ``__slots__`` as a plain
    attribute afterwards, which makes no slot: the copy keeps its instances'
    attributes in a ``__dict__``, and an instance a worker made (a
    ``@dataclass(slots=True)`` of the main script returned by a task) was
    pickled with that ``__dict__`` as its state, which the program's own
    class, without one, refused as it was unpickled. Given when the class is
    made, as its ``class`` statement gives them, they make its slots. Only
    where there are some: ``__slots__ = ()`` makes none, and a
    ``typing.NamedTuple``'s, always empty, may not be given again (its
    metaclass refuses it).
    """
    make, (metaclass, name, bases, type_kwargs, *rest), *after = reduced
    type_kwargs = {**type_kwargs, "__slots__": slots}
    return (make, (metaclass, name, bases, type_kwargs, *rest), *after)


def dumps_in_band(obj: Any) -> bytes:
    """Pickle ``obj`` into one stream, buffers included (for a channel that is not ours).

    With a pickler of its own, never the thread's kept one (:func:`dumps`),
    which this may be called inside of (a ``__reduce__`` that logs). A scalar,
    and built-in containers of them, go through the plain C pickler, as in
    :func:`dumps`.
    """
    if type(obj) in _SCALARS:
        return _pickle.dumps(obj, protocol=5)
    stream = io.BytesIO()
    if not _pickler_class.cache_info().currsize:
        try:
            _PlainPickler(stream, protocol=5).dump(obj)
            return stream.getvalue()
        except (_NotPlain, RecursionError):  # as in _ReusablePickler.dumps
            stream = io.BytesIO()
    _pickler_class()(stream, protocol=5).dump(obj)
    return stream.getvalue()


def objects_pickled(obj: Any, exceptions: ExceptionsPickled) -> Collection[int]:
    """The ids of the objects pickling ``obj`` meets, in a pickler of its own; raises what pickling raises.

    ``exceptions``: what the stream pickling around ``obj`` knows of its
    exceptions (:class:`._remote_errors.ExceptionsPickled`): it cuts those
    open where met again, and shares their reductions.
    """
    pickler = _pickler_class()(io.BytesIO(), protocol=5)
    pickler.exceptions = exceptions.for_a_check()  # type: ignore[attr-defined]  # our subclass's
    pickler.dump(obj)
    met: dict[int, Any] = pickler.memo.copy()
    return met.keys()


def dumps_function(fn: Any) -> bytes:
    """Pickle a task's function, once: later calls reuse the bytes.

    Only plain functions without a closure are cached: their pickle cannot
    change, except for the globals a function sent by value carries, which stay
    as they were the first time (like the standard library's pools, whose
    workers never see later changes either), and how it travels, by name or by
    value, which follows ``sys.path``: a pickle is kept for the ``sys.path`` it
    was made under (:func:`_under_sys_path`).
    Closures, bound methods and other callables, whose state may change between
    calls, are pickled every time.
    """
    if type(fn) is BuiltinFunctionType and type(fn.__self__) is ModuleType:
        # A module's C function goes by reference, as cloudpickle would send it, without
        # importing cloudpickle (about 17 ms, with inspect). Not a C method bound to an
        # object, whose class cloudpickle may have to send by value.
        try:
            return _pickle.dumps(fn, protocol=5)
        except Exception:
            pass
    if unpickling_a_task and type(fn) is FunctionType:
        _refuse_a_function_of_a_module_being_imported(fn)
    cacheable = type(fn) is FunctionType and fn.__closure__ is None
    if cacheable:
        answers = _under_sys_path()  # a module found by name then may not be now, or the reverse
        cached = answers.functions.get(fn)
        if cached is not None:
            return cached
    if cacheable and _named_here(fn):  # a map's chunk runner
        data = _pickle.dumps(fn, protocol=5)
    else:
        stream = io.BytesIO()
        _pickler_class()(stream, protocol=5).dump(fn)
        data = stream.getvalue()
    if cacheable and answers.path == sys.path:  # else another thread changed it meanwhile: made under which?
        answers.functions[fn] = data
    return data


def _named_here(fn: FunctionType) -> bool:
    """Whether ``fn`` is a module-level function of this package, which its module holds under its name.

    Pickled by that name by the C pickler, as the full pickler would send it,
    without importing cloudpickle: every worker imports this package from its
    own folder before its first task (:func:`_importable_by_name`). Not a nested function, nor
    a ``@parallel`` one (its name holds its wrapper): the full pickler sends those.
    """
    module = fn.__module__
    if not isinstance(module, str) or module.partition(".")[0] != __package__:
        return False
    return getattr(sys.modules.get(module), fn.__qualname__, None) is fn


def load_function(data: bytes) -> Any:
    """The function pickled as ``data``, unpickled once in this process and kept.

    At most ``_FUNCTIONS_KEPT`` functions of ``_FUNCTION_BYTES_KEPT`` pickled
    bytes in all are kept (then all are forgotten); a larger one is unpickled
    for each task that sends it.
    """
    global _loaded_bytes
    fn = _loaded.get(data)
    if fn is None:
        fn = _pickle.loads(data)
        adopt(fn)  # in a worker, a function of the main script: its __main__ takes on what it refers to
        if len(data) <= _FUNCTION_BYTES_KEPT:
            if len(_loaded) >= _FUNCTIONS_KEPT or _loaded_bytes + len(data) > _FUNCTION_BYTES_KEPT:
                _loaded.clear()
                _loaded_bytes = 0
            _loaded[data] = fn
            _loaded_bytes += len(data)
    return fn


_loaded: dict[bytes, Any] = {}
_loaded_bytes = 0  # the pickled bytes of the functions in _loaded


def forget_loaded_functions() -> None:
    """Forget the functions :func:`load_function` kept: a module they came from was imported again.

    A function sent by name pickles alike from either copy of its module.
    """
    global _loaded_bytes
    _loaded.clear()
    _loaded_bytes = 0


def loads(data: bytes, buffers: list[Any]) -> Any:
    """Unpickle what :func:`dumps` made."""
    return _pickle.loads(data, buffers=buffers)


_KEEP_THE_LIST = frozenset({"APPEND", "APPENDS", "STOP"})  # opcodes that pop the list and leave it, or end


def list_length(data: bytes) -> int | None:
    """How many items the list pickled as ``data`` holds, read without unpickling them; ``None`` if no list.

    For results that cannot be unpickled here: a map learns how many items of
    its chunk ran. The pickle's opcodes are read with ``pickletools``, and
    the stack followed by their stack effects: the items appended to the
    object at the bottom of the stack, the list, are counted.

    Raises:
        ValueError: ``data`` is not a whole pickle.
    """
    import pickletools

    depth = 0  # objects on the stack, marks left out
    marks: list[int] = []  # the depth at each mark
    count = 0
    for opcode, _, _ in pickletools.genops(data):
        before, after = opcode.stack_before, opcode.stack_after
        if depth == 0 and after and opcode.name != "EMPTY_LIST" and after != [pickletools.markobject]:
            return None  # the first object is no list
        if opcode.name == "APPENDS" and marks[-1] == 1:  # appends to the list, at the bottom
            count += depth - marks[-1]
        elif opcode.name == "APPEND" and depth == 2:
            count += 1
        if pickletools.markobject in before:  # pops through the last mark
            depth = marks.pop() - before.index(pickletools.markobject)
        else:
            depth -= len(before)
        if before and depth == 0 and before != after and opcode.name not in _KEEP_THE_LIST:
            return None  # the list went into another object (a tuple, say): that one is what was pickled
        if after == [pickletools.markobject]:
            marks.append(depth)
        else:
            depth += len(after)
    return count


class Unreadable:
    """An item of a list that :func:`loads_each` could not unpickle, in its place; ``error`` says why."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
# What pushes a string, bytes or a number, whole once made and holding nothing (as pickletools names it).
_ATOMS_PUSHED = [[name] for name in ("int", "bool", "int_or_bool", "float", "bytes", "bytes_or_str", "str", "None")]


def loads_each(data: bytes, buffers: list[Any]) -> list[Any] | None:
    """The items of the list pickled as ``data``, read apart: an :class:`Unreadable` in place of each that cannot be.

    For a map chunk's results that cannot all be unpickled here (one of a
    class only the worker imports, or rebuilt by a function that raises
    here): the others are not lost with it. The list's opcodes are read with
    ``pickletools``, the stack followed as in :func:`list_length`, and cut
    into the opcodes of each item. Items that share an object (one refers to
    what another made) are read together, as one list, each group apart from
    the others, by the unpickler that reads a whole chunk; a string, bytes, a
    number or what is found by name in a module (a class, a function) that
    they share binds no two of them: each group has its own. A group that
    cannot be read fails as one: its items share objects, which what failed
    may have left part-made (a list it was filling, an object whose state it
    was setting, even one an earlier item made, changed by a ``__setstate__``
    that then raised), and no reading of the opcodes tells the part-made from
    the whole. A group read is read as the whole list would have been.

    Returns:
        The items, or ``None`` where ``data`` is not a pickled list (or is not
        whole, or is read otherwise than this function expects).
    """
    try:
        spans = _item_spans(data)
    except Exception:  # noqa: BLE001  # not a whole pickle (pickletools' ValueError), or not as expected
        return None
    if spans is None:
        return None
    groups: dict[int, list[int]] = {}
    for number, group in enumerate(_sharing(spans)):
        groups.setdefault(group, []).append(number)
    taken = [0]  # the buffers of the items before each
    for *_, count in spans:
        taken.append(taken[-1] + count)
    items: list[Any] = [None] * len(spans)
    for numbers in groups.values():
        numbering: dict[int, int] = {}
        body = b"".join(_written(spans[number][0], numbering) for number in numbers)
        group_buffers = [buffer for number in numbers for buffer in buffers[taken[number] : taken[number + 1]]]
        try:
            read = loads(b"\x80\x05](" + body + b"e.", group_buffers)  # PROTO 5, EMPTY_LIST, MARK ... APPENDS, STOP
        except KeyboardInterrupt:  # Ctrl-C, as the map read: not the items'
            raise
        except BaseException as error:  # noqa: BLE001  # unpickling runs the user's code: a SystemExit is the items'
            _let_go_of_the_chunk(error)
            read = [Unreadable(error)] * len(numbers)
        if type(read) is not list or len(read) != len(numbers):
            return None  # not cut as this function expects: nothing of it is taken for an item's
        for number, item in zip(numbers, read):
            items[number] = item
    return items


def _sharing(spans: list[tuple[list[Any], list[int], list[int], int]]) -> list[int]:
    """For each item of ``spans``, the first item of its group: those it shares an object with, and theirs."""
    first = list(range(len(spans)))

    def root(number: int) -> int:
        while first[number] != number:
            first[number] = first[first[number]]
            number = first[number]
        return number

    made_by: dict[int, int] = {}  # memo entry: the item that made it
    for number, (_, puts, _, _) in enumerate(spans):
        for index in puts:
            made_by[index] = number
    for number, (_, _, gets, _) in enumerate(spans):
        for index in gets:
            other = made_by.get(index)
            if other is not None:
                low, high = sorted((root(number), root(other)))
                first[high] = low
    return [root(number) for number in range(len(spans))]


def _let_go_of_the_chunk(error: BaseException) -> None:
    """Keep where ``error`` was raised as text (a note), not as frames: those hold the chunk being read.

    The error is kept (the cause of what the map raises), and a traceback
    holds each frame of the stack it came through, with their locals: the
    reader's, with the chunk's pickle and what was read of it, and their
    callers' (a chunk of 1 kB strings kept 245 MB alive). As with the errors
    of a worker (``concurrent.futures`` keeps theirs as text likewise).
    Every error chained to it loses its traceback: its cause and its context
    both (an error raised from one while another was handled has the two),
    and the errors of an exception group, and theirs; following the causes
    alone left the others' frames, and through their callers the chunk.
    Neither is assigned through the error's own ``__setattr__``: a frozen
    dataclass's refuses every attribute, and raised out of the reader.
    """
    import traceback

    below = error.__traceback__.tb_next if error.__traceback__ is not None else None  # (this module's frame left out)
    lines = traceback.format_tb(below)
    for linked in linked_errors(error):
        BaseException.with_traceback(linked, None)  # (not assigned: a frozen dataclass's __setattr__ refuses it)
    if lines:
        note = "Traceback of its unpickling in this process (most recent call last):\n" + "".join(lines).rstrip()
        from contextlib import suppress

        with suppress(Exception):  # the user's error, its attributes its own: kept without the note
            notes = getattr(error, "__notes__", ())
            if isinstance(notes, (list, tuple)):  # (anything else, the error's own, is left as it is)
                object.__setattr__(error, "__notes__", [*notes, note])


def _item_spans(data: bytes) -> list[tuple[list[Any], list[int], list[int], int]] | None:
    """For each item of the list pickled as ``data``: its opcodes, its memo's puts and its gets of others', and its buffers (:func:`_item_pickles`).

    ``None`` where ``data`` is no list appended to item by item.

    Raises:
        ValueError: ``data`` is not a whole pickle.
    """
    import pickletools

    operations = list(pickletools.genops(data))
    starts: list[int] = []  # the position where what each object on the stack took shape began; marks left out
    marks: list[tuple[int, int]] = []  # the depth at each mark, and its position
    spans: list[tuple[int, int]] = []  # where each item of the list begins and ends
    # The first item of a batch of appends begins after the list's own opcodes (its mark; or the
    # list, its memo entry, the appends before), not where the first object left on the stack
    # began: the pickler makes an object met again while what it holds is pickled (a tuple
    # holding a list that holds it), throws it away (POP, POP_MARK) and fetches it from the
    # memo. Those opcodes were left out of the item, and a buffer among them counted for none.
    own_end = 0  # where the list's own opcodes before the item being read end
    ends_here = False  # the last opcode was the list's own: the next one begins after them
    list_made = False  # the last opcode made the list: the next, a memo put, is the list's own too
    for opcode, _, at in operations:
        position = at or 0  # (known for bytes)
        name, before, after = opcode.name, opcode.stack_before, opcode.stack_after
        depth = len(starts)
        if ends_here:
            own_end, ends_here = position, False
        if depth == 0 and after and name != "EMPTY_LIST" and after != [pickletools.markobject]:
            return None  # the first object is no list
        if name == "APPENDS" and marks and marks[-1][0] == 1:
            first = marks[-1][1] + 1  # after the mark (one byte)
            spans.extend(zip([first, *starts[2:]], [*starts[2:], position]))  # each ends where the next begins
            ends_here = True
        elif name == "APPEND" and depth == 2:
            spans.append((own_end, position))
            ends_here = True
        elif (depth == 0 and name == "EMPTY_LIST") or (list_made and (name in _MEMO_PUTS or name == "MEMOIZE")):
            ends_here = True
        list_made = depth == 0 and name == "EMPTY_LIST"
        if pickletools.markobject in before:  # pops through the last mark
            mark_depth, mark_position = marks.pop()
            below = mark_depth - before.index(pickletools.markobject)
            popped = [mark_position, *starts[below:]]
            del starts[below:]
        else:
            popped = starts[depth - len(before) :] if before else []
            del starts[depth - len(before) :]
        if before and not starts and before != after and name not in _KEEP_THE_LIST:
            return None  # the list went into another object (a tuple, say): that one is what was pickled
        if after == [pickletools.markobject]:
            marks.append((len(starts), position))
        else:
            starts.extend([min(popped, default=position)] * len(after))
    return _item_pickles(data, operations, spans)


def _item_pickles(
    data: bytes, operations: list[Any], spans: list[tuple[int, int]]
) -> list[tuple[list[Any], list[int], list[int], int]]:
    """The opcodes of each item of ``data`` at ``spans``, the memo entries it uses that other items make, and its buffers.

    Its opcodes as they are (bytes), frames left out, and its memo's puts and
    gets (``MEMOIZE`` too) as ``(_PUT, index)`` and ``(_GET, index)``, at
    their indices in the whole pickle, so that items read together use the
    memo as the whole would (:func:`_written`). Where it refers to a string, bytes, a number
    or what was found by name in a module (``GLOBAL``, ``STACK_GLOBAL`` of
    strings), the opcodes that made it are written in its place: the item
    needs no other for it. Its other references (``gets``) are to objects:
    those it shares with the item that made them.
    """
    import pickletools

    pickles: list[tuple[list[Any], list[int], list[int], int]] = []
    memoized = 0  # the entries MEMOIZE made so far: the index of the next one
    made: dict[int, bytes] = {}  # memo entry: the opcodes that push it again, where it needs no other object
    stack: list[bytes | None] = []  # the same for each object on the stack; None: it does
    marks: list[list[bytes | None]] = []
    ends = [*(at or 0 for _, _, at in operations[1:]), len(data)]
    span = iter(spans)
    begins, ends_at = next(span, (len(data), len(data)))
    body: list[Any] = []
    puts: list[int] = []
    gets: list[int] = []
    buffer_count = 0
    for (opcode, argument, position), end in zip(operations, ends):
        if position >= ends_at:  # the item read is whole
            pickles.append((body, puts, gets, buffer_count))
            body, puts, gets, buffer_count = [], [], [], 0
            begins, ends_at = next(span, (len(data), len(data)))
        name, raw = opcode.name, data[position:end]
        index = None
        if name == "MEMOIZE":
            index = memoized
            memoized += 1
        elif name in _MEMO_PUTS:
            index = argument
        if index is not None:
            made[index] = stack[-1]  # type: ignore[assignment]  # (None where it needs another object)
            if made[index] is None:
                del made[index]
        elif name in _MEMO_GETS:
            stack.append(made.get(argument))
        elif name == "FRAME":
            pass
        elif name == "MARK":
            marks.append(stack)
            stack = []
        elif name == "GLOBAL" or (not opcode.stack_before and [made_as.name for made_as in opcode.stack_after] in _ATOMS_PUSHED):
            stack.append(raw)
        elif name == "STACK_GLOBAL":
            module, qualname = stack[-2:]
            del stack[-2:]
            stack.append(module + qualname + raw if module is not None and qualname is not None else None)
        else:
            before = opcode.stack_before
            if pickletools.markobject in before:
                stack = marks.pop()
                before = before[: before.index(pickletools.markobject)]
            if before:
                del stack[-len(before) :]
            stack.extend([None] * len(opcode.stack_after))
        if position < begins:
            continue  # the list's own opcodes (itself, its marks, its appends)
        if index is not None:
            puts.append(index)
            body.append((_PUT, index))
        elif name in _MEMO_GETS and argument in made:
            body.append(made[argument])  # made again: no other item's
        elif name in _MEMO_GETS:
            gets.append(argument)
            body.append((_GET, argument))
        elif name != "FRAME":  # (a length to read ahead, of the whole pickle's frames)
            if name == "NEXT_BUFFER":
                buffer_count += 1
            body.append(raw)
    return pickles


_PUT, _GET = b"r", b"j"  # LONG_BINPUT, LONG_BINGET


def _written(parts: list[Any], numbers: dict[int, int]) -> bytes:
    """The opcodes of an item (:func:`_item_pickles`), its memo entries numbered by ``numbers``, in which new ones go last.

    Numbered afresh for each group read: at their indices in the whole
    pickle, the unpickler's memo for a group of the ten-thousandth item was
    as long as that (it grows to the largest index), and reading 100,000
    results apart took six seconds.
    """
    written = []
    for part in parts:
        if type(part) is bytes:
            written.append(part)
        else:
            code, index = part
            written.append(code + struct.pack("<I", numbers.setdefault(index, len(numbers))))
    return b"".join(written)


def _reduce(obj: Any) -> Any:
    if isinstance(obj, type):
        if not _importable_by_name(obj.__module__):  # a class of such a module, as a function below
            _send_by_value(obj.__module__)
        return NotImplemented
    if isinstance(obj, FunctionType):
        if unpickling_a_task:
            _refuse_a_function_of_a_module_being_imported(obj)
        # A decorator's wrapper (@profiled's) is made again from its function: sent by value, as
        # cloudpickle sends what it cannot send by name, it took its metrics record's lock along.
        made_again = for_worker_functions.get(id(obj.__code__))
        if not _importable_by_name(obj.__module__):
            _send_by_value(obj.__module__)
            # cloudpickle sends it, and its module's functions and classes, by value
            return NotImplemented if made_again is None else made_again(obj)
        reference = _decorated_reference(obj)
        if reference is not None:
            return reference
        return NotImplemented if made_again is None else made_again(obj)
    if isinstance(obj, ModuleType):  # a global of a function sent by value: a sibling module, say
        if not _importable_by_name(obj.__name__):
            _send_by_value(obj.__name__)  # cloudpickle sends its namespace, functions by value
        return NotImplemented
    if isinstance(obj, memoryview):
        return _reduce_memoryview(obj)
    if type(obj) is io.TextIOWrapper and obj is not sys.stdout and obj is not sys.stderr:
        # cloudpickle sends a copy of the whole file in a StringIO, where the task's writes
        # were lost without a word (pickle refuses it; a thread task gets the file itself).
        raise _pickle.PicklingError(
            f"an open file ({getattr(obj, 'name', '?')!r}) cannot go to or from a worker process: "
            "send its name, and open it there"
        )
    if isinstance(obj, ContextVar):  # a global of a function sent by value
        from ._process_context import reduce_contextvar

        return reduce_contextvar(obj)
    if type(obj) is CodeType and obj.co_filename != _NAMELESS_CODE:  # a function's code, sent by value
        return (_code_of_file, (obj.replace(co_filename=_NAMELESS_CODE), obj.co_filename))
    if type(obj) is _CACHED_FUNCTION:
        return _reduce_cached_function(obj)
    return NotImplemented


_CACHED_FUNCTION = type(functools.lru_cache(maxsize=None)(len))  # functools.cache, functools.lru_cache


def _reduce_cached_function(cached: Any) -> Any:
    """Send a ``functools.cache`` (``lru_cache``) function by value, unless a worker finds it by its name.

    It pickles by its name, as a function does, but unlike a function it is
    not sent by value where the name leads nowhere in a worker: its
    ``__main__`` has no such name (the script never runs there), and a task
    that called one of the script's, or a map of one, failed with ``Can't get
    attribute 'rate' on <module '__main__'>``. Nor where its module, importable,
    holds something else under that name, or nothing: one made in a function
    ("Can't pickle local object"), one cached under another name
    (``fast = lru_cache(maxsize=16)(slow)``: "not the same object as
    mod.slow"), a cached ``functools.partial`` (no ``__qualname__``). Its
    function goes by value, and the worker wraps it again, with the same
    ``maxsize`` and ``typed``, and a cache of its own.
    """
    module = getattr(cached, "__module__", None)
    qualname = getattr(cached, "__qualname__", None)
    if (
        isinstance(module, str)
        and isinstance(qualname, str)
        and module != "__main__"
        and _importable_by_name(module)
        and _named(module, qualname) is cached
    ):
        return NotImplemented
    parameters = cached.cache_parameters()
    return (_cached_again, (cached.__wrapped__, parameters["maxsize"], parameters["typed"]))


def _named(module: str, qualname: str) -> Any:
    """What ``module``, as imported here, holds under ``qualname``; ``None`` if nothing (a ``<locals>`` name)."""
    target: Any = sys.modules.get(module)
    try:
        for part in qualname.split("."):
            target = getattr(target, part)
    except Exception:  # noqa: BLE001  # a module's or class's __getattr__ may raise anything
        return None
    return target


def _cached_again(fn: Any, maxsize: int | None, typed: bool) -> Any:
    """``fn`` wrapped as ``functools.lru_cache(maxsize=maxsize, typed=typed)`` wraps it."""
    return functools.lru_cache(maxsize=maxsize, typed=typed)(fn)


def _reduce_memoryview(view: memoryview) -> Any:
    """Send ``view``'s bytes, out of band where they are contiguous, and its format and shape, which they lose.

    Its bytes alone arrived as a view of bytes: ``sum()`` of a view of doubles
    in a task added up their bytes. A view ``memoryview.cast`` cannot make
    again from bytes (a format with a byte order, ``"<d"``; a 0 in a shape of
    several dimensions) fails to pickle, naming why, rather than arrive so.

    Raises:
        PicklingError: ``view`` cannot be made again from its bytes.
    """
    layout: tuple[Any, ...] = ()
    if view.format != "B" or view.ndim != 1:
        layout = (view.format, view.shape)
        try:  # on one item's bytes: a view of the user's memory that a traceback kept crashed the garbage collector
            _view_as(bytes(view.itemsize), view.format, (1,) * view.ndim)
            problem = "a 0 in its shape" if view.ndim > 1 and not view.nbytes else None
        except ValueError as error:
            problem = str(error)
        if problem is not None:
            raise _pickle.PicklingError(
                f"a memoryview of format {view.format!r} and shape {view.shape} cannot go to or from a "
                f"worker process ({problem}): send its bytes (view.tobytes()) and cast them there, or a NumPy array"
            )
    data = _pickle.PickleBuffer(view) if view.c_contiguous else view.tobytes()
    return (_view_as, (data, *layout)) if layout else (memoryview, (data,))


def _view_as(data: Any, format: Any, shape: tuple[int, ...]) -> Any:
    """A view of the bytes ``data`` with the ``format`` and ``shape`` of the view they came from."""
    return memoryview(data).cast(format) if len(shape) == 1 else memoryview(data).cast(format, shape)


# cloudpickle names every code object it sends by value this way, for pickles that do not
# depend on where a function was written. The workers' tracebacks, log records and
# warnings then named no file, with no source line: each code object takes its file along.
_NAMELESS_CODE = "<dynamic-code>"


def _code_of_file(code: CodeType, filename: str) -> CodeType:
    """``code``, unpickled nameless (``_NAMELESS_CODE``), named again as the file it was written in."""
    return code.replace(co_filename=filename)


#: In a worker process: its main thread is unpickling a task, and so maybe importing the task's modules.
unpickling_a_task = False


def _refuse_a_function_of_a_module_being_imported(fn: FunctionType) -> None:
    """Raise ``RuntimeError`` if a worker importing ``fn``'s module for a task would send ``fn`` to a worker.

    A module that runs process tasks of its own functions as it is imported
    has each worker that imports it (to unpickle one of them) run them again,
    in a pool of its own, whose workers import it again: processes without
    end. A function of a module fully imported, or sent by another thread,
    goes.
    """
    module = sys.modules.get(fn.__module__)
    if getattr(getattr(module, "__spec__", None), "_initializing", False) and (
        threading.current_thread() is threading.main_thread()
    ):
        raise RuntimeError(
            f"{fn.__qualname__} of module {fn.__module__} was sent to a process task while a worker process "
            "imported that module to unpickle a task: a module that runs process tasks of its own "
            "functions when it is imported runs them again in every worker that imports it, without "
            'end. Run them in a function the program calls, or under `if __name__ == "__main__":`, '
            "not at a module's top level"
        )


def _send_by_value(module: str) -> None:
    """Have cloudpickle send the functions and classes of ``module`` by value from now on."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[module])


def _importable_by_name(module: str) -> bool:
    """Whether a worker, given this process's ``sys.path``, imports ``module`` by name: the same one.

    Asked of the import system's finders as they are now (the answer is kept
    until ``sys.path`` changes): its top-level package must be found, from the
    file it was imported from. Another of the same name found first (a folder
    put before its own on ``sys.path``, an installed copy of a checkout removed
    from it) would run other code in the worker, with no error. ``__main__``
    and unknown modules are left to cloudpickle, which sends their functions by
    value. This package's own modules always are: a worker imports them from
    the package's folder, first on its command line (``PACKAGE_FOLDER``),
    whatever the program did to ``sys.path`` since; sent by value, they took
    cloudpickle into themselves until it gave up ("excessively deep
    recursion"), and no lambda could go.
    """
    if module == "__main__" or module not in sys.modules or module.partition(".")[0] == __package__:
        return True
    answers = _under_sys_path()
    origin = getattr(getattr(sys.modules.get(module), "__spec__", None), "origin", None)
    known = answers.importable.get(module)
    if known is not None and known[0] == origin:
        return known[1]
    top_level = module.partition(".")[0]
    found = _findable(top_level, answers.path)
    if found and "." in module:
        found = _still_in_its_folder(module) if answers.asked != -1 else _found_where_loaded(module, answers.path)
    answers.importable[module] = (origin, found)
    if answers.asked != -1:
        examined = answers.examined.get(top_level)
        if examined is None or examined[0] is not _spec_of(sys.modules.get(top_level)):
            _pin_modules(answers)  # not looked at as it is now: new, or imported again
    return found


def _findable(top_level: str, path: list[str]) -> bool:
    """Whether the finders find ``top_level`` where it was imported from (or it has no origin to compare).

    The path finder looks along ``path``, a copy of ``sys.path``, not along
    ``sys.path`` itself: another thread that puts a folder on it and takes it
    off again as the finder walks it had a folder missed, and a module found
    elsewhere, under a ``sys.path`` that looked unchanged by the end. A module
    it loaded through a relative entry of ``path``, and a namespace package
    where ``path`` has such an entry, are looked for in the folders they were
    loaded from, as workers do (:data:`pins`).
    """
    from importlib.machinery import PathFinder

    if top_level in sys.builtin_module_names:
        return True
    loaded = getattr(sys.modules.get(top_level), "__spec__", None)
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None or not _worker_finders.the_workers(finder):
            continue
        if finder is PathFinder and _has_relative_entry(path):
            folders = module_folders(loaded) if is_namespace(loaded) else None
            if folders is not None:  # pinned, wherever found: is a portion still there?
                if is_namespace(_find_in(top_level, folders)):
                    return True
                continue
            folders = _relative_folders(loaded, _absolute_entries(path))
            if folders is not None:
                if _found_in(top_level, folders, loaded):
                    return True
                continue  # maybe another finder's (an editable install's)
        try:
            spec = find_spec(top_level, path if finder is PathFinder else None)
        except Exception:  # a finder that fails is one that cannot find it
            continue
        if spec is not None:
            return loaded is None or _same_file(spec.origin, loaded.origin)
    return False


def _still_in_its_folder(module: str) -> bool:
    """Whether a module in a namespace package, pinned to its own folder (:func:`_pin_modules`), is there still.

    So is each package above it that is in a namespace package. Another
    portion would have a worker import another file of its name, with no
    error. True for a module of any other package.
    """
    parts = module.split(".")
    for depth in range(1, len(parts)):
        if not is_namespace(_spec_of(sys.modules.get(".".join(parts[:depth])))):
            continue
        name = ".".join(parts[: depth + 1])
        loaded = _spec_of(sys.modules.get(name))
        folder = submodule_folder(name, loaded)
        if folder is not None and not _found_in(
            name, (os.path.join(folder, *parts[:depth]),), loaded, compare_folders=False
        ):
            return False
    return True


def _found_where_loaded(module: str, path: list[str]) -> bool:
    """Whether a worker importing ``module`` along ``path`` finds it, and each package above it, where they were loaded.

    Where ``sys.path`` has no relative entry (nothing is pinned), a worker
    imports a namespace package's module as the import system does: each
    package along its parent's path as it finds it now (``path`` at the top),
    every meta path finder asked. A namespace package's own ``__path__`` is no
    guide: one no longer found keeps its old folders. With its folder gone
    from ``sys.path``, or another with a package or module of its name put
    before it, a worker imported none, or another file, with no error. True
    for a module of a regular package, found with it (:func:`_findable`).
    """
    parts = module.split(".")
    if not is_namespace(_spec_of(sys.modules.get(parts[0]))):
        return True
    along: list[Any] = path
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        loaded = _spec_of(sys.modules.get(name))
        found = _find_as_imported(name, along, depth == 1)
        if found is None:
            return False
        if not is_namespace(loaded):
            return _same_file(found.origin, getattr(loaded, "origin", None))
        if not is_namespace(found):
            return False
        along = list(found.submodule_search_locations)
    return True


def _find_as_imported(name: str, along: list[Any], top_level: bool) -> Any:
    """The spec the import system finds for ``name`` along its parent's path ``along`` (``sys.path``'s copy at the top)."""
    from importlib.machinery import PathFinder

    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None or not _worker_finders.the_workers(finder):
            continue
        try:  # a top-level module: the path finder along the copy, the others as the import system asks them
            spec = find_spec(name, along if not top_level or finder is PathFinder else None)
        except Exception:  # a finder that fails is one that cannot find it
            continue
        if spec is not None:
            return spec
    return None


def _has_relative_entry(path: list[Any]) -> bool:
    """Whether ``path`` (a copy of ``sys.path``) has an entry the working directory resolves (``''``, say)."""
    return any(isinstance(entry, str) and not os.path.isabs(entry) for entry in path)


def _absolute_entries(path: list[Any]) -> set[str]:
    return {entry for entry in path if isinstance(entry, str) and os.path.isabs(entry)}


def module_folders(spec: Any) -> tuple[str, ...] | None:
    """The folders of ``sys.path`` a top-level module (its ``spec``) was found in; None where it has no file.

    A module's is its file's folder, a package's the folder that holds it. A
    namespace package (a folder without ``__init__.py``) has no file: its
    folders are those that hold each of its portions, in their order, as its
    path was last looked for (read without looking for it again, which the
    import system does along ``sys.path``, with ``''`` the working directory
    of the moment). None for one whose path holds other than folders (the
    placeholder of an editable install): it is left to its own finder.
    """
    origin = getattr(spec, "origin", None)
    if isinstance(origin, str) and os.path.isabs(origin):
        folder = os.path.dirname(origin)
        return (os.path.dirname(folder) if getattr(spec, "submodule_search_locations", None) is not None else folder,)
    return _portion_folders(_portions_now(spec) if is_namespace(spec) else None)


def _portion_folders(portions: tuple[Any, int] | None) -> tuple[str, ...] | None:
    """The folders that hold a namespace package's ``portions`` (:func:`_portions_now`); None for other than folders."""
    if portions is None:
        return None
    paths = portions[0]
    if not paths or not all(isinstance(portion, str) and os.path.isabs(portion) for portion in paths):
        return None
    return tuple(dict.fromkeys(os.path.dirname(portion) for portion in paths))  # once each: '' twice finds two


def _portions_now(spec: Any) -> tuple[Any, int] | None:
    """A namespace package's path as last looked for (its own list, not iterated), and its length then."""
    locations = getattr(spec, "submodule_search_locations", None)
    portions = getattr(locations, "_path", locations)
    return (portions, len(portions)) if isinstance(portions, (list, tuple)) else None


def _same_portions(portions: tuple[Any, int] | None, spec: Any) -> bool:
    """Whether a namespace package's path is still ``portions`` (:func:`_portions_now`); True for any other module."""
    if portions is None:
        return True
    now = _portions_now(spec)
    return now is not None and now[0] is portions[0] and now[1] == portions[1]


def is_namespace(spec: Any) -> bool:
    """Whether ``spec`` is a namespace package's: portions, no file, the import system's loader for them or none yet."""
    if getattr(spec, "origin", None) is not None or getattr(spec, "submodule_search_locations", None) is None:
        return False
    loader = getattr(spec, "loader", None)  # None in a spec just found; _NamespaceLoader before Python 3.11
    return loader is None or type(loader).__name__ in ("NamespaceLoader", "_NamespaceLoader")


def submodule_folder(name: str, spec: Any) -> str | None:
    """The folder of ``sys.path`` submodule ``name`` (its ``spec``) was found in: up from its file, a folder a part.

    None where it has no file, or its folders are not named as its name's
    parts (another importer's layout).
    """
    origin = getattr(spec, "origin", None)
    if not isinstance(origin, str) or not os.path.isabs(origin):
        return None
    parts = name.split(".")
    if getattr(spec, "submodule_search_locations", None) is None:
        del parts[-1]  # a module: its file is the last part
    folder = os.path.dirname(origin)
    for part in reversed(parts):
        if os.path.basename(folder) != part:
            return None
        folder = os.path.dirname(folder)
    return folder


def _relative_folders(loaded: Any, absolute: set[str]) -> tuple[str, ...] | None:
    """The folders a module (its spec ``loaded``) came from, if a relative ``sys.path`` entry found it.

    That is: one of them is none of the ``absolute`` entries of a ``sys.path``
    that has a relative one (its caller's to know).
    """
    folders = module_folders(loaded)
    if folders is None or all(_is_absolute_entry(folder, absolute) for folder in folders):
        return None
    return folders


def _is_absolute_entry(folder: str, absolute: set[str]) -> bool:
    """Whether ``folder`` is one of the ``absolute`` entries, spelt as it is or otherwise (a symlink, "..")."""
    return folder in absolute or any(_same_file(entry, folder) for entry in absolute)


def _found_in(name: str, folders: tuple[str, ...], loaded: Any, compare_folders: bool = True) -> bool:
    """Whether the path finder finds module ``name`` in ``folders``, at the file of its spec ``loaded``.

    ``compare_folders``: a top-level module's folders are compared too.
    """
    spec = _find_in(name, folders)
    if spec is None or (compare_folders and module_folders(spec) != folders):
        return False
    return _same_file(spec.origin, getattr(loaded, "origin", None))


def _find_in(name: str, folders: tuple[str, ...]) -> Any:
    """What the path finder finds of module ``name`` in ``folders``: its spec, or None."""
    from importlib.machinery import PathFinder

    try:
        return PathFinder.find_spec(name, list(folders))
    except Exception:  # a finder that fails is one that cannot find it
        return None


def _same_file(found: str | None, loaded: str | None) -> bool:
    """Whether two origins of a module are one file: a folder on ``sys.path`` twice (a symlink, ``..``) finds it so."""
    if found == loaded:
        return True
    if not found or not loaded:
        return False
    try:
        return os.path.samefile(found, loaded)
    except (OSError, ValueError):  # not a file ("frozen", in a zip archive), or none there now
        return False


def _pin_modules(answers: _PathAnswers) -> None:
    """Pin the top-level modules loaded through a relative entry of ``answers.path`` to their folders.

    ``''`` (``python -c``, the REPL, notebooks) stands for the working
    directory, which this process may change while each worker keeps the one
    it started in: a worker importing such a module by name, or a module it
    imports by name (a sibling), found another module of the name, or none,
    and ran other code than the parent's with no error. Workers import each
    pinned module from its folder (``_process_worker._PinnedModules``); a
    module imported again from another folder since is pinned no more, or
    pinned there. Every namespace package is pinned, wherever it was found
    (a worker's working directory with a folder of its name would add a
    portion to it), to the folders its path has, and each module loaded in it
    to its own folder: its path is looked for again along ``sys.path`` when
    that changes, with ``''`` the working directory of the moment, and a
    module loaded before came from a folder it may no longer have. Asked when
    a module not looked at yet is answered about, and when a pool sends a
    task after modules were imported (:func:`refresh_pins`): a walk through
    ``sys.modules``, with a file lookup only for the modules not looked at
    yet that are in no folder of ``sys.path``; a namespace package's path,
    which changes with no new spec, is read at each, and its folders kept
    while it is the same list.
    """
    global pins, pins_asked
    absolute = _absolute_entries(answers.path)
    with _answers_lock:  # two walks at once: the later one's pins, with its count
        asked = modules_now()
        examined: dict[str, _Examined] = {}
        found: dict[str, tuple[str, ...]] = {}
        namespaces: dict[str, bool] = {}  # whether a package is a namespace package, as asked
        modules = list(sys.modules.items())
        for name, module in modules:
            if "." in name or name == "__main__":  # the program's own goes by value; a worker has its own
                continue
            loaded = _spec_of(module)
            known = answers.examined.get(name)
            if known is not None and known[0] is loaded and (known[2] is None or _same_portions(known[2], loaded)):
                folders, portions = known[1], known[2]
            elif is_namespace(loaded):  # its path changes, its spec does not
                portions = _portions_now(loaded)
                folders = _portion_folders(portions)
            else:
                portions = None
                folders = _relative_folders(loaded, absolute)
                if folders is not None and not _found_in(name, folders, loaded):
                    folders = None
            if portions is not None:
                namespaces[name] = True
            examined[name] = (loaded, folders, portions)
            if folders is not None:
                found[name] = folders
        # The modules of namespace packages, once every top-level module was looked at: in any
        # order (a package imported again goes last in sys.modules, after its modules).
        for name, module in modules if namespaces else ():
            if "." not in name or name.partition(".")[0] not in namespaces:
                continue
            package = name.rpartition(".")[0]
            in_namespace = namespaces.get(package)
            if in_namespace is None:  # a package in one: a namespace package too, or not
                in_namespace = namespaces[package] = is_namespace(_spec_of(sys.modules.get(package)))
            if not in_namespace:
                continue
            loaded = _spec_of(module)
            known = answers.examined.get(name)
            if known is not None and known[0] is loaded:
                folders = known[1]
            else:
                folder = None if is_namespace(loaded) else submodule_folder(name, loaded)
                folders = None if folder is None else (folder,)  # a namespace package's are its package's
            examined[name] = (loaded, folders, None)
            if folders is not None:
                found[name] = folders
        answers.examined, answers.asked = examined, asked
        if found != answers.pins:
            answers.pins = found
        if _answers is answers:
            pins, pins_asked = answers.pins, asked


def _spec_of(module: Any) -> Any:
    """``module.__spec__``, or None: read from its namespace, which loads no lazy module (``LazyLoader``'s)."""
    try:
        return object.__getattribute__(module, "__dict__").get("__spec__")
    except Exception:  # no module: anything may sit in sys.modules
        return None


def modules_now() -> tuple[int, str | None, Any]:
    """What tells whether modules were imported since: how many, and the last (a module imported again goes last).

    The last is held by a weak reference where it can be, else by itself, not
    by its ``id``: a module deleted and imported again from elsewhere, the
    count unchanged, could get the freed one's address, and read as the same.
    """
    modules = sys.modules
    while True:
        try:
            last = next(reversed(modules), None)
            break
        except RuntimeError:  # "dictionary changed size during iteration": a thread imported as it was read
            continue
    module = modules.get(last)  # type: ignore[arg-type]
    try:
        held: Any = weakref.ref(module)
    except TypeError:  # None, or another object that takes no weak reference
        held = module
    return len(modules), last, held


def refresh_pins() -> dict[str, tuple[str, ...]]:
    """:data:`pins` under ``sys.path`` as it is, asked again first where modules were imported since they were last."""
    answers = _under_sys_path()
    if answers.asked != -1 and answers.asked != modules_now():
        _pin_modules(answers)
    return answers.pins


class _PathAnswers:
    """What depends on ``sys.path``, under one ``sys.path``: which modules a worker imports by name, the pickles made so.

    The answer for a module is kept with the file it was loaded from: one
    imported again from another folder since is asked again. So are the
    modules pinned under it (:func:`_pin_modules`).
    """

    __slots__ = ("asked", "examined", "functions", "importable", "path", "pins")

    def __init__(self, path: list[str]) -> None:
        self.path = path
        self.importable: dict[str, tuple[str | None, bool]] = {}
        self.functions: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()
        self.pins: dict[str, tuple[str, ...]] = {}  # replaced, never changed: a pool knows them by their identity
        # Each module looked at by _pin_modules: its spec then, its folders if pinned, a namespace package's path.
        self.examined: dict[str, _Examined] = {}
        # sys.modules when the pins were last asked (modules_now); -1 where no entry is relative: never asked.
        self.asked: Any = None if _has_relative_entry(path) else -1


_PATHS_KEPT = 4  # the answers under the last few sys.path, for a program that pushes and pops a folder
_answers_by_path: dict[tuple[str, ...], _PathAnswers] = {}  # oldest first
_answers = _PathAnswers([])  # under the sys.path of the last call
#: The modules workers import from the folders this process loaded them from (top-level ones loaded
#: through a relative entry of ``sys.path``, namespace packages and the modules loaded in them), under
#: the answers in use (:func:`_pin_modules`); a process pool sends them with ``sys.path`` when they
#: change (``ProcessBackend._prepare``).
pins: dict[str, tuple[str, ...]] = {}
#: ``sys.modules`` when :data:`pins` were asked (what :func:`modules_now` gave); -1 where ``sys.path`` has no
#: relative entry; None before they were asked under the ``sys.path`` in use.
pins_asked: Any = None
_answers_lock = threading.Lock()


def _new_answers_lock_after_fork() -> None:
    """In a forked child, a new lock: a thread of the parent may have held it as it forked."""
    global _answers_lock
    _answers_lock = threading.Lock()


_at_fork_in_child(_new_answers_lock_after_fork)


def take_worker_finders(finders: list[tuple[str, str]]) -> None:
    """Keep the import finders a worker reported it has (``_worker_finders``); if that changed which of this process's they lack, ask every module again.

    What was answered, and pickled, under the finders assumed before may
    have a worker import a module it cannot find.
    """
    global _answers, pins, pins_asked
    with _answers_lock:
        if not _worker_finders.take(finders):
            return
        _answers_by_path.clear()
        _answers = _PathAnswers([])
        pins, pins_asked = _answers.pins, _answers.asked


def _under_sys_path() -> _PathAnswers:
    """The answers under ``sys.path`` as it is now: those kept for it, if it was so before, else new ones.

    A program that puts a folder on ``sys.path`` around each submission (a
    plugin loader) re-pickled its function on each one (60 us a submission,
    against 5) when a change dropped every answer. A pickle made while
    another thread changed ``sys.path`` is not kept (:func:`dumps_function`).
    """
    global _answers, pins, pins_asked
    answers = _answers
    if answers.path != sys.path:
        with _answers_lock:
            path = tuple(sys.path)
            kept = _answers_by_path.pop(path, None)
            answers = kept if kept is not None else _PathAnswers(list(path))
            while len(_answers_by_path) >= _PATHS_KEPT:
                del _answers_by_path[next(iter(_answers_by_path))]
            _answers_by_path[path] = answers  # now the newest
            _answers = answers
            pins, pins_asked = answers.pins, answers.asked
    return answers


def _decorated_reference(fn: FunctionType) -> tuple[Any, tuple[str, str]] | None:
    """How a worker finds ``fn`` by its name, ``(module, qualname)``, where that name holds a wrapper of it, else None.

    The wrapper is ``@parallel``'s or ``@profiled``'s, or ``fn`` is that
    ``@profiled`` wrapper itself. A class method's name gives the wrapper
    bound to its class, which the lookup sees through: pickled by cloudpickle,
    the function (or wrapper) was found under no name, and went by value.
    """
    if fn.__module__ == "__main__":
        return None
    # No wrapper exists where the decorators were never imported: a worker sending back
    # a result or an exception (whose rebuilding function is met here) imported them,
    # the handle and the runtime, about 80 ms counted in the task's timeout. Nor before
    # the lookup is made, after the classes: while a task's thread imports them, sys.modules
    # holds the module half imported (AttributeError, which failed the pickle and ended the worker).
    decorators: Any = sys.modules.get(f"{__package__}._decorators")
    named = getattr(decorators, "parallel_function_named", None)
    # A class method's name gives the wrapper bound to its class, which the lookup sees
    # through. Sent by value, its function read a copy of the module's globals, not what
    # the initializer set there.
    if named is None:
        return None
    reference = fn.__module__, fn.__qualname__
    # Asked of every function pickled by its name: its name is looked up once, a @profiled
    # wrapper is known by its code's id, and only a wrapper is asked what it measures (which
    # hashes its code). Asked more, an ordinary function's pickle took 45% longer.
    held = decorators._unbound(decorators.held_under(*reference))
    if isinstance(held, decorators.ParallelFunction) and held.__wrapped__ is fn:  # as named(fn) finds it
        return _undecorated, reference
    if id(getattr(held, "__code__", None)) not in for_worker_functions:
        return None  # its name holds no @profiled wrapper
    layer_of = sys.modules[f"{__package__}._metrics"].profiled_layer  # loaded: it made one
    layer = layer_of(held)
    if layer is None:
        return None
    if held is fn:
        return _imported_function, reference
    return (_undecorated, reference) if layer.function is fn else None


def _undecorated(module: str, qualname: str) -> Any:
    return imported_object(module, qualname).__wrapped__


def _imported_function(module: str, qualname: str) -> Any:
    """What :func:`imported_object` finds, the function itself where it is a class method bound to its class."""
    found = imported_object(module, qualname)
    return found.__func__ if isinstance(found, MethodType) else found


def imported_object(module: str, qualname: str) -> Any:
    """What ``module``, imported here, holds under ``qualname`` (dotted: a method's is read on its class).

    Raises:
        ImportError: ``module`` cannot be imported here.
        AttributeError: it has no object of that name.
    """
    import importlib

    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target
