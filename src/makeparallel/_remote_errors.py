"""How an exception crosses the process boundary and arrives equal, chain and all.

* **Its own pickling first.** The exception's own ``__reduce_ex__`` is tried in
  the sending process: rebuilt there, it must give the same type, ``args``,
  ``str()``, C-level fields (``errno``, ``filename``, ``start``...),
  ``__slots__`` and ``__dict__``. Built-in exceptions and classes with their own ``__reduce__``
  pass.
* **A rebuild where that fails.** A class whose ``__init__`` takes other
  arguments than it passes on to ``Exception`` (``MyError(code)`` storing
  ``f"{code}: ..."`` in ``args``) cannot be rebuilt from its ``args``. It is
  made with its built-in base's ``__new__`` and ``__init__`` (so ``OSError``'s
  C-level fields are filled as by ``OSError(errno, strerror, filename)``),
  without its own ``__init__``; then its C-level fields, slots and
  ``__dict__`` are set as they were (the approach of mpire's
  ``populate_exception``). A C-level field or slot that cannot be pickled
  (``AttributeError.obj``, a lock) stays unset; an attribute or an argument
  that cannot (``HTTPError``'s open response, a lock in ``args``) arrives as
  ``None``, with a note that says so.
* **The chain as objects.** ``__cause__``, ``__context__`` and
  ``__suppress_context__`` travel with each exception (and with the members of
  an ``ExceptionGroup``, which its own pickling carries), a chain that loops
  back (``raise error from error``) included; notes live in ``__dict__``.
* **Cycles as cycles.** The chain, ``__dict__``, C-level fields and slots are set once
  the exception exists, so an attribute that refers back to it (a job that
  keeps the error it failed with) refers back to it on arrival; arguments
  that do are set then too, and the exception is made without them. A group
  cannot be made without its members: where they refer back to it (a member
  raised while the group was handled), they are made first without their
  state, which is set with the group's.
  Tracebacks cannot be pickled: the remote one arrives as text, a
  :class:`RemoteTraceback` hung below the deepest exception of the chain, so
  that Python prints it first, where the failure began.
"""

from __future__ import annotations

import builtins
import types

from ._notes import add_note

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Iterator
    from typing import Any

__all__ = [
    "CarriedError",
    "ExceptionsPickled",
    "RemoteTraceback",
    "attach_remote_traceback",
    "described",
    "linked_errors",
    "mark_unpickling_failure",
    "reduce_exception",
    "unpickling_failure",
]

_GROUP: Any = getattr(builtins, "BaseExceptionGroup", ())  # Python 3.11 on; isinstance(x, ()) is False
_ATOMS = frozenset({type(None), int, str, bytes, bool, float})  # field values that always pickle
# Descriptors that are no field of the exception's own: its chain, its __dict__ and args, a weak reference to it.
_NOT_FIELDS = frozenset(
    {"__cause__", "__context__", "__suppress_context__", "__traceback__", "__dict__", "args", "__notes__", "__weakref__"}
)


# Said of an error a worker raised as it unpickled a task's function and arguments: none of its code ran.
UNPICKLING_NOTE = "makeparallel: raised as the worker process unpickled the task's function and arguments"


def mark_unpickling_failure(error: BaseException) -> None:
    """Say so on ``error``, raised as a worker unpickled its task: a note, and a mark that a map takes off (:func:`unpickling_failure`).

    A map's chunk that fails so ran none of its items: the map runs them
    again, apart, so that an item whose unpickling raises fails alone.
    """
    add_note(error, UNPICKLING_NOTE)
    vars(error)["_unpickling"] = True


def unpickling_failure(error: BaseException) -> bool:
    """Whether ``error`` was raised as a worker unpickled its task (:func:`mark_unpickling_failure`); the mark is taken off."""
    return bool(vars(error).pop("_unpickling", False))


def described(error: BaseException) -> str:
    """``error`` as the last line of its traceback shows it: ``Type: message``.

    A ``str()`` that raises gives ``<exception str() failed>``, as Python
    prints it: raised where an error is described, it killed the worker
    describing an exception it could not pickle, or the pool's loop thread
    describing one raised as a result was unpickled.
    """
    try:
        text = str(error)
    except Exception:
        text = "<exception str() failed>"
    return f"{type(error).__qualname__}: {text}"


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process, as text.

    Set as ``__cause__`` of the deepest exception of the chain that ``get()``
    raises, so that the printed traceback starts where the task failed in the
    worker.
    """

    def __str__(self) -> str:
        return "\n" + str(self.args[0]) if self.args else ""


def attach_remote_traceback(error: BaseException, text: str) -> None:
    """Hang ``text`` below the deepest exception of ``error``'s printed chain."""
    seen = {id(error)}
    deepest = error
    while True:
        below = deepest.__cause__
        if below is None and not deepest.__suppress_context__:
            below = deepest.__context__
        if below is None or id(below) in seen:
            break
        seen.add(id(below))
        deepest = below
    object.__setattr__(deepest, "__cause__", RemoteTraceback(text))  # past its own __setattr__ (_fill)


class CarriedError(Exception):
    """An exception a task raised on another executor's worker, pickled by the library to travel there.

    Such an executor (a ``ProcessPoolExecutor``, loky, Dask) pickles what a
    call raised with its own pickler, which drops the ``__cause__`` and
    ``__context__`` of an exception (Dask's keeps them); and one that cannot
    be pickled so (an attribute holding an open response or a lock, a
    ``__reduce__`` that raises) lost its class: Dask sent a bare
    ``Exception`` with its text, ``ProcessPoolExecutor`` the pickling error.
    The worker sends it in this wrapper instead: ``args`` are the exception pickled by the library
    (:func:`reduce_exception`, as the process backend sends it), its
    traceback as text, and its description. :meth:`unwrapped` gives it back.

    Its ``str()`` and ``repr()`` give the description alone, not its
    ``args``: an executor that shows the error shows what the task raised
    (Dask's log of a failed task), and one that cuts a long error short (Dask rebuilds an error whose
    ``str()`` passes ``distributed.admin.max-error-length`` from that text)
    leaves it whole.
    """

    def __str__(self) -> str:
        if len(self.args) == 3 and isinstance(self.args[2], str):
            return _short(self.args[2])
        return super().__str__()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def unwrapped(self) -> BaseException:
        """The exception carried, its remote traceback hung below it; one that cannot be unpickled here, described.

        A wrapper that its executor rebuilt from its text alone (Dask's, cut
        short past its length limit) gives a ``TaskError`` with that text,
        not an error of its own: this runs where the executor's future ends,
        and an error raised there left the task's handle pending for good.
        So does one whose unpickling raises anything, ``SystemExit`` and
        ``KeyboardInterrupt`` included (a ``__reduce__`` that calls
        ``sys.exit()`` here): escaping the done-callback, which catches
        ``Exception`` only, it ended the thread of ``ProcessPoolExecutor``
        that ends its futures, and every task of that pool stayed pending.
        """
        from ._serialization import loads
        from .errors import TaskError

        if len(self.args) != 3 or not all(isinstance(part, (bytes, str)) for part in self.args):
            text = " ".join(str(part) for part in self.args)
            return TaskError(
                f"the task raised an error that its executor cut short, so it could not be rebuilt here: {_short(text)}"
            )
        data, traceback_text, description = self.args
        error: BaseException
        try:
            error = loads(data, [])
        except BaseException as unpicklable:  # noqa: BLE001  # unpickling runs the error's code: a SystemExit is not ours
            error = TaskError(f"the task raised {description}, which could not be unpickled here: {described(unpicklable)}")
        attach_remote_traceback(error, traceback_text)
        return error


def _short(text: str, limit: int = 1000) -> str:
    """``text`` cut to about ``limit`` characters, saying so."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


class ExceptionsPickled:
    """What one pickle stream knows of the exceptions in it: those open, and each one's reduction.

    ``open``: the exceptions met so far; one met again before pickle
    remembers it is cut there (:func:`reduce_exception`). ``reductions``:
    each exception's reduction, worked out once per stream. ``checked``: the
    same for the picklers that check what an exception holds
    (:func:`_met_pickling`), shared by all of them. Such a check pickles the
    exceptions nested in it, with their own checks; worked out again each
    time, each level of nesting doubled the work, and an error nested 40
    deep took hours. A check does not try an exception's own pickling: that
    makes a copy with the class's ``__init__``, which may enroll it where the
    exception was (``job.error = self``), and the check then met a new copy
    at each level, never one it was cutting, without end.
    """

    __slots__ = ("bare", "checked", "checking", "open", "picklable", "reductions")

    def __init__(self) -> None:
        self.open: dict[int, BaseException] = {}
        self.reductions: dict[int, tuple[BaseException, tuple[Any, ...]]] = {}
        self.checked: dict[int, tuple[BaseException, tuple[Any, ...]]] = {}
        self.picklable: dict[int, tuple[Any, bool]] = {}  # each value's _pickles, kept alive by its key's value
        self.checking = False  # a check's: its reductions are in checked, and never the exception's own
        self.bare: set[int] = set()  # members made without their state, which their group's carries

    def for_a_check(self) -> ExceptionsPickled:
        """The same for a pickler that checks a value here: what is open or bare now is there too, the checks' reductions shared."""
        nested = ExceptionsPickled()
        nested.checked = self.checked
        nested.picklable = self.picklable
        nested.checking = True
        nested.open.update(self.open)
        nested.bare.update(self.bare)
        return nested

    def clear(self) -> None:
        self.open.clear()
        self.reductions.clear()
        self.checked.clear()
        self.picklable.clear()
        self.bare.clear()


def reduce_exception(error: BaseException, pickled: ExceptionsPickled) -> tuple[Any, ...]:
    """The reduction of ``error`` for pickle: its own if faithful, else a rebuild; with its chain.

    Only what makes the exception is pickled before it exists; the rest is
    the reduction's state, which pickle sends after it made and remembered
    the exception: a chain (``raise error from error``), a field or an
    attribute that comes back to the exception comes back to it on arrival
    too. One met again inside what makes it, before it exists to refer to,
    would be cut there (``None``), and pickle's memo would hand that ``None``
    back for the exception itself: arguments that refer back to it
    (``JobFailed(job)``, with ``job.error`` the exception) go in its state
    too. A group cannot be made without its members: where they refer back
    to it, they are made bare, and their states travel in the group's.
    ``pickled``: what this stream knows of its exceptions.
    """
    if id(error) in pickled.open:
        return (_none, ())
    pickled.open[id(error)] = error
    reduction = _reduction_of(error, pickled)
    later = reduction[2][-1]
    pickled.bare.update(id(member) for member, _, _ in later)  # before pickle makes them, in the group's args
    if id(error) in pickled.bare:
        return reduction[:2]
    return reduction


def _reduction_of(error: BaseException, pickled: ExceptionsPickled) -> tuple[Any, ...]:
    reductions = pickled.checked if pickled.checking else pickled.reductions
    known = reductions.get(id(error))
    if known is None:
        known = reductions[id(error)] = (error, _reduction(error, pickled))
    return known[1]


def _reduction(error: BaseException, pickled: ExceptionsPickled) -> tuple[Any, ...]:
    chain = (error.__cause__, error.__context__, error.__suppress_context__)
    later: tuple[tuple[BaseException, Any, Any], ...] = ()
    if isinstance(error, _GROUP) and _refers_back(error.args, error, pickled):
        # Each member's state (those of nested groups too), given once the group exists.
        members = _members(error)
        reductions = [(member, _reduction_of(member, pickled)) for member in members]
        later = tuple((member, reduction[5], reduction[2]) for member, reduction in reductions)
        bare = {id(member) for member in members} - pickled.bare
        pickled.bare |= bare
        if _refers_back(error.args, error, pickled):  # a member's own arguments lead back: no order makes it
            later = ()
        pickled.bare -= bare
    core = None if pickled.checking else _own_reduction(error, pickled)  # a check makes no copy (ExceptionsPickled)
    if core is not None and (later or not _refers_back(core[1], error, pickled)):
        make, args, state = core
        return (make, args, (state, chain, later), None, None, _set_state)
    fields = {name: value for name, value in _fields(error).items() if _pickles(value, pickled)}
    args, dropped = _picklable_args(error, pickled)
    state = _picklable_state(error, pickled, dropped)
    made_with = args if later or not _refers_back(args, error, pickled) else ()
    return (_rebuild, (type(error), made_with), (args, fields, state, chain, later), None, None, _fill)


def linked_errors(error: BaseException) -> Iterator[BaseException]:
    """``error``, then each error linked to it: its cause, its context, a group's members, and theirs; each once.

    A chain may loop (``raise error from error``); errors are told apart by
    id, each kept alive by the one it is reached from.
    """
    seen: set[int] = set()
    waiting = [error]
    while waiting:
        linked = waiting.pop()
        if id(linked) in seen:
            continue
        seen.add(id(linked))
        yield linked
        members = linked.exceptions if isinstance(linked, _GROUP) else ()
        waiting.extend(other for other in (linked.__cause__, linked.__context__, *members) if isinstance(other, BaseException))


def _members(group: BaseException) -> list[BaseException]:
    """The members of ``group`` and of the groups in it, each once."""
    found: dict[int, BaseException] = {}
    waiting = list(group.exceptions)  # type: ignore[attr-defined]
    while waiting:
        member = waiting.pop()
        if id(member) not in found:
            found[id(member)] = member
            if isinstance(member, _GROUP):
                waiting.extend(member.exceptions)
    return list(found.values())


def _own_reduction(error: BaseException, pickled: ExceptionsPickled) -> tuple[Any, ...] | None:
    """``error``'s own ``(callable, args, state)``, if rebuilding from it gives an equal exception."""
    try:
        reduced = error.__reduce_ex__(5)
        if not isinstance(reduced, tuple) or any(part is not None for part in reduced[3:]):
            return None
        make, args = reduced[0], reduced[1]
        state = reduced[2] if len(reduced) > 2 else None
        if not _harmless(make, args) or not _pickles(args, pickled):
            return None  # arguments that cannot be pickled: the rebuild sends what pickles of them
        copy = _apply(make, args, state)
        if _equal(copy, error) and (
            type(state) is not dict or all(_pickles(value, pickled) for value in state.values())
        ):
            return (make, args, state)  # else the rebuild sends what pickles of its state
    except Exception:
        pass
    return None


def _harmless(make: Any, args: tuple[Any, ...]) -> bool:
    """Whether ``make(*args)``, the copy that tries an exception's own pickling, can change none of the sender's objects.

    So where the arguments are plain values, or ``make`` is a class whose
    ``__new__`` and ``__init__`` are built in. A class's own ``__init__``
    given the sender's objects may change them: ``job.errors.append(self)``
    put the copy on the job, whose pickling then met it, tried its own
    pickling, put another copy there, and so on without end. The rebuild
    runs no code of the class's.
    """
    if all(type(arg) in _ATOMS for arg in args):
        return True
    return isinstance(make, type) and not any(
        isinstance(getattr(make, name, None), types.FunctionType) for name in ("__new__", "__init__")
    )


def _equal(copy: Any, error: BaseException) -> bool:
    return (
        type(copy) is type(error)
        and copy.args == error.args
        and str(copy) == str(error)
        and _fields(copy) == _fields(error)
        and getattr(copy, "__dict__", {}) == getattr(error, "__dict__", {})
    )


def _fields(error: BaseException) -> dict[str, Any]:
    """The fields ``error`` keeps outside its ``__dict__``: C-level ones (``errno``, ``filename``...) and ``__slots__``.

    ``BaseException``'s own pickling carries neither: a class's slots, like
    the fields of a C extension's exception, are fields of this kind too.
    """
    fields = {}
    for klass in type(error).__mro__:
        # A copy made in one C call: gone through in Python, another thread setting an attribute
        # of the class meanwhile raised "dictionary changed size during iteration".
        for name, attribute in list(vars(klass).items()):
            if name in _NOT_FIELDS or name in fields:
                continue
            if isinstance(attribute, (types.MemberDescriptorType, types.GetSetDescriptorType)):
                fields[name] = getattr(error, name, None)
    return fields


def _pickles(value: Any, pickled: ExceptionsPickled) -> bool:
    """Whether ``value`` can travel as the pool's pickler sends it (functions by value included).

    Worked out once per stream: a list that many exceptions keep (their
    batch) was pickled whole for each of them, each check nested in the last,
    a thousand such in seconds. Met again inside its own check, it passes:
    that check tells.
    """
    known = pickled.picklable.get(id(value))
    if known is None:
        pickled.picklable[id(value)] = (value, True)
        known = pickled.picklable[id(value)] = (value, _met_pickling(value, pickled) is not None)
    return known[1]


def _refers_back(value: Any, error: BaseException, pickled: ExceptionsPickled) -> bool:
    """Whether pickling ``value`` meets ``error`` again (it does not if ``value`` cannot be pickled)."""
    met = _met_pickling(value, pickled)
    return met is not None and id(error) in met


def _met_pickling(value: Any, pickled: ExceptionsPickled) -> Collection[int] | None:
    """The ids of the objects pickling ``value`` meets (none of atoms); None if it cannot be pickled.

    ``pickled``: the stream's exceptions; those open around ``value`` are cut
    where met again, as the stream's pickler does. Without them, an exception met
    inside its own attributes pickled itself again, each time in a new pickler,
    until the recursion limit.
    """
    if type(value) in _ATOMS:
        return ()
    if type(value) in (list, tuple) and all(type(item) in _ATOMS for item in value):  # notes, args
        return ()
    # A pickler of its own, not _serialization.dumps: this runs inside that thread's
    # reused pickler (its reducer_override), whose stream and memo it would reset.
    from ._serialization import objects_pickled  # on this failure path only

    try:
        return objects_pickled(value, pickled)
    except Exception:
        return None


def _picklable_args(error: BaseException, pickled: ExceptionsPickled) -> tuple[tuple[Any, ...], list[str]]:
    """``error.args``, with ``None`` for each argument that cannot be pickled, and the names of those (``args[1]``).

    ``ValueError("pool exhausted", lock)``, or a connection among a driver's
    error's arguments: the whole exception became a ``TaskError``, and so did
    the exception raised while handling it, whose ``__context__`` it was, so
    that ``except KeyError`` no longer caught what the task raised.
    """
    args = error.args
    if _pickles(args, pickled):
        return args, []
    kept = [_pickles(arg, pickled) for arg in args]
    return tuple(arg if keep else None for arg, keep in zip(args, kept)), [
        f"args[{index}]" for index, keep in enumerate(kept) if not keep
    ]


def _picklable_state(error: BaseException, pickled: ExceptionsPickled, dropped_args: list[str]) -> dict[str, Any]:
    """``error.__dict__``, with ``None`` for what cannot be pickled, and a note that names it (and ``dropped_args``).

    ``urllib.error.HTTPError`` holds its open response: without it, the error
    still arrives as itself, with its code, message and url, where one
    attribute that cannot be pickled made the whole exception a ``TaskError``.
    ``None`` rather than nothing: a class whose ``__getattr__`` reads its
    ``__dict__`` (``HTTPError`` again) would raise ``KeyError`` on any lookup.
    """
    state = dict(getattr(error, "__dict__", {}))
    dropped = [name for name, value in state.items() if name != "__notes__" and not _pickles(value, pickled)]
    for name in dropped:
        state[name] = None
    dropped = [*dropped_args, *dropped]
    if dropped:
        note = f"makeparallel: {', '.join(dropped)} could not be pickled, and arrived as None"
        state["__notes__"] = [*state.get("__notes__", ()), note]
    return state


def _apply(make: Any, args: Any, state: Any = None) -> Any:
    """What unpickling a ``(make, args, state)`` reduction does."""
    obj = make(*args)
    _give_state(obj, state)
    return obj


def _give_state(obj: Any, state: Any) -> None:
    """What unpickling does with a reduction's ``state``: ``__setstate__``, else an update of ``__dict__``."""
    if state:
        setstate = getattr(obj, "__setstate__", None)
        if setstate is not None:
            setstate(state)
        else:
            obj.__dict__.update(state)


def _set_state(error: BaseException, state_chain_later: tuple[Any, tuple[Any, Any, bool], Any]) -> None:
    """Give an exception made by its own reduction that reduction's state, then its chain, then its members' states."""
    state, chain, later = state_chain_later
    _give_state(error, state)
    _set_chain(error, chain, later)


def _set_chain(error: BaseException, chain: tuple[Any, Any, bool], later: Any) -> None:
    """Set the chain of an exception just made, in the order Python sets it (a cause suppresses the context).

    ``later``: the states of the members of a group, made bare, as ``(member, setter, state)``.
    """
    cause, context, suppress_context = chain
    object.__setattr__(error, "__cause__", cause)  # past its own __setattr__, as in _fill
    object.__setattr__(error, "__context__", context)
    object.__setattr__(error, "__suppress_context__", suppress_context)
    for member, setter, state in later:
        setter(member, state)


def _rebuild(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException:
    """``cls`` made without its own ``__init__``, its built-in base's fields filled from ``args``."""
    base: Any = next(klass for klass in cls.__mro__ if klass.__module__ == "builtins")
    error: BaseException = base.__new__(cls, *args)
    try:
        base.__init__(error, *args)  # OSError(errno, strerror, filename), UnicodeDecodeError(...)...
    except Exception:
        pass  # the base takes other arguments: its fields are set by _fill
    return error


def _fill(error: BaseException, state: tuple[tuple[Any, ...], dict[str, Any], dict[str, Any], Any, Any]) -> None:
    """Give a rebuilt exception its ``args``, ``__dict__``, the fields its base did not fill (slots too), and its chain.

    Each is set past the exception's own ``__setattr__``, as unpickling sets
    an object's ``__dict__``: a frozen dataclass's refuses every attribute,
    ``args`` and ``__cause__`` too, and the task failed with a
    ``TaskSerializationError`` in place of its own error.
    """
    args, fields, attributes, chain, later = state
    object.__setattr__(error, "args", args)
    if attributes:  # first: a __getattr__ that reads the __dict__ (HTTPError's) needs it below
        error.__dict__.update(attributes)
    for name, value in fields.items():
        try:
            if getattr(error, name, None) == value:
                continue  # filled by the base's __init__ (and None stays unset: OSError prints a set one)
            object.__setattr__(error, name, value)
        except Exception:
            pass  # read-only, or a lookup the class refuses
    _set_chain(error, chain, later)


def _none() -> None:
    return None
