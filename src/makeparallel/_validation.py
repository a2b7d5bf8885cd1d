"""Checks for user input, each raising at the call that made the mistake.

Messages state the rule, the value and, where it is not obvious, the fix.
"""

from __future__ import annotations

import functools
import math
import operator
from types import (
    BuiltinFunctionType,
    FunctionType,
    MethodDescriptorType,
    MethodType,
    MethodWrapperType,
    WrapperDescriptorType,
)
from typing import Any

__all__ = [
    "as_called",
    "as_integer",
    "as_seconds",
    "check_count",
    "check_finite_seconds",
    "check_name",
    "check_priority",
    "check_seconds",
    "check_task_timeout",
    "check_wait_timeout",
    "code_is_real",
    "is_real",
    "refuse_unfitting_call",
    "refuse_unused_call",
    "shown",
    "unused_call_kind",
]


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number (not a ``bool``): an int, a float, any ``numbers.Real``, or a 0-d array of one.

    NumPy's scalars (``float32``, ``int64``) subclass neither ``int`` nor
    ``float`` but are ``numbers.Real``, and so is a ``Fraction``: seconds and
    rates computed over NumPy arrays arrive as them. ``numbers`` is imported
    only for such a value: ``import makeparallel`` does not load it.

    A 0-d NumPy array of integers or floats (``np.array(0.5)``) is taken as
    the scalar it holds, as counts take an integer one (``operator.index``
    does, :func:`as_integer`), and as the standard waits take an integer one
    (``threading.Event().wait(np.array(1))``; they refuse a float one only
    because they read seconds as a float or through ``__index__``, and take no
    ``float32`` either). Its dtype's kind says so (``"b"``, a bool, is not
    one), as :func:`as_integer` reads it; ``float()`` gives the number.
    """
    if isinstance(value, (int, float)):
        return not isinstance(value, bool)
    import numbers

    if isinstance(value, numbers.Real):
        return True
    return getattr(value, "ndim", None) == 0 and getattr(getattr(value, "dtype", None), "kind", None) in ("i", "u", "f")


def as_integer(value: Any) -> int | None:
    """``value`` as a plain ``int`` if it is an integer that is not a ``bool``, else ``None``.

    Any type with ``__index__`` is one (``operator.index``): NumPy's ``int64``,
    as ``arr.sum() // 8`` gives, is no ``int`` subclass. A float, even ``2.0``,
    is not. The plain int is what the callers keep, so the value's own type
    goes no further (into a pool's size, a pickle, a message).
    """
    if type(value) is int:
        return value
    # NumPy's bool (dtype kind "b") has no __index__ from NumPy 2.3; before, it had
    # one that warned it would go (a DeprecationWarning, an error where warnings are).
    if isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", None) == "b":
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def as_seconds(value: float) -> float:
    """``value``, a real number, as a float; an int too large for one is infinitely many seconds, of its sign.

    ``float(10**400)`` raises ``OverflowError``, and so does each clock sum and
    wait given such an int: converted here, it is checked, and waited for, as
    ``math.inf`` is.
    """
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def shown(value: Any) -> str:
    """``repr(value)`` for a message; an int too large for a float by its size, not its hundreds of digits.

    Past 4300 digits ``repr()`` of an int raises ``ValueError`` itself.
    """
    if isinstance(value, int) and math.isinf(as_seconds(value)):
        return f"an int of about {'-' if value < 0 else ''}10**{round(math.log10(abs(value)))}"
    return repr(value)


def check_wait_timeout(timeout: Any, name: str = "timeout") -> float | None:
    """A wait may last any number of seconds >= 0, or ``None`` (forever); returns it as a float (:func:`as_seconds`)."""
    return None if timeout is None else _check_seconds(timeout, name, " or None")


def check_seconds(value: Any, name: str) -> float:
    """A wait that must end: any number of seconds >= 0, not ``None``; returns it as a float (:func:`as_seconds`)."""
    return _check_seconds(value, name, "")


def _check_seconds(value: Any, name: str, alternatives: str) -> float:
    """``value`` is a number of seconds >= 0; ``alternatives`` ends the message with what else is accepted."""
    if not is_real(value):
        raise TypeError(f"{name} must be a number of seconds{alternatives}, got {value!r}")
    seconds = as_seconds(value)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0{alternatives}, got {shown(value)}")
    return seconds


def check_finite_seconds(value: Any, name: str, allow_none: bool = False) -> float | None:
    """A duration that must end (a retry's wait, a breaker's recovery): seconds >= 0, finite; ``None`` where allowed.

    Returns it as a float (:func:`as_seconds`), or ``None``.
    """
    if value is None and allow_none:
        return None
    alternatives = " or None" if allow_none else ""
    if not is_real(value):
        raise TypeError(f"{name} must be a number of seconds{alternatives}, got {value!r}")
    seconds = as_seconds(value)
    if not 0 <= seconds < math.inf:
        raise ValueError(f"{name} must be a finite number of seconds >= 0{alternatives}, got {shown(value)}")
    return seconds


# inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR, without importing inspect.
ASYNC_CODE = 0x80 | 0x200
# And inspect.CO_GENERATOR: a function with any of these runs none of its body when called.
UNRUN_CODE = ASYNC_CODE | 0x20
# What calling a class runs, unless its metaclass has a __call__ of its own: it makes an object.
_MAKES_AN_OBJECT = type.__call__
# Callables written in C, which no async def makes.
_NEVER_ASYNC = frozenset((BuiltinFunctionType, MethodWrapperType, WrapperDescriptorType, MethodDescriptorType))


def unused_call_kind(fn: Any) -> tuple[str, str] | None:
    """What ``fn`` is and what calling it makes, where nothing would use what it makes; else ``None``.

    For a callback or a display, which the library calls and whose return
    value it drops, neither awaiting nor iterating it. A class makes an
    object (``progress=tqdm``, the class, is the likely one), unless its
    metaclass defines a ``__call__`` of its own, which is judged as an
    object's ``__call__`` is (an ``Enum``'s looks a member up). An ``async
    def`` function or method, or an object whose ``__call__`` is one, makes a
    coroutine; one that yields makes an async generator, which is not even
    warned of, and a plain function that yields a generator, whose body never
    runs either. Each also behind ``functools.partial``, however deep:
    ``inspect.iscoroutinefunction`` looks through a partial to a function,
    but not to such an object.
    """
    if type(fn) in _NEVER_ASYNC:  # a queue's put, a list's append: a collector's callback
        return None
    plain = fn
    while type(plain) is functools.partial:
        plain = plain.func
    if type(plain) is MethodType:
        plain = plain.__func__
    if type(plain) is FunctionType and not plain.__code__.co_flags & UNRUN_CODE and not plain.__dict__:
        return None  # a plain function or method (or a partial of one), as most callbacks are: ~0.1 us
    import inspect  # only where a callback or display is checked: importing the package does not pay for it

    while isinstance(fn, functools.partial):
        fn = fn.func
    if not callable(fn):
        return None
    if isinstance(fn, type) and type(fn).__call__ is _MAKES_AN_OBJECT:
        # (A metaclass's own __call__, an Enum's lookup or a registry's, is read as any __call__ below.)
        name = fn.__qualname__
        return "a class", f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name} object that nothing uses"
    # Each as inspect can read it: a mock made with spec= of a function passes for one (isinstance)
    # and its __code__ is a mock too, whose co_flags a MagicMock says are any flag and a Mock cannot
    # combine with one (TypeError). Called, such a mock makes a mock, not a coroutine.
    read = [each for each in (fn, type(fn).__call__) if code_is_real(each)]
    if any(inspect.iscoroutinefunction(each) for each in read):
        return "an async function", "a coroutine that nobody awaits"
    if any(inspect.isasyncgenfunction(each) for each in read):
        return "an async generator function", "an async generator that nobody iterates"
    if any(inspect.isgeneratorfunction(each) for each in read):
        return "a generator function", "a generator that nobody iterates"
    return None


def refuse_unused_call(method: str, callback: Any, when: str, plain: str, runs_on: str) -> None:
    """Raise ``TypeError`` where calling ``callback`` makes what nothing uses (:func:`unused_call_kind`).

    A callback or a listener is called on a plain thread, and nothing awaits
    or iterates what it returns: a class made an object, an async function a
    coroutine that did nothing, with a ``RuntimeWarning`` far from the mistake
    (none for a generator, async or not). ``method`` names the call that registers
    it, ``when`` says when it is called, ``plain`` what to pass instead and
    ``runs_on`` the thread it runs on.
    """
    made = unused_call_kind(callback)
    if made is not None:
        raise TypeError(
            f"{method}({getattr(callback, '__qualname__', callback)}) is {made[0]}: called {when}, it would "
            f"only make {made[1]}, and do nothing. Pass a plain {plain}; it runs on {runs_on} "
            "(to reach an event loop from there, use loop.call_soon_threadsafe)"
        )


# inspect.CO_VARARGS, without importing inspect.
_VARARGS = 0x04


def call_misfit(fn: Any, count: int) -> str | None:
    """Why ``fn`` cannot be called with ``count`` positional arguments, as ``inspect`` says; ``None`` where it can.

    Also ``None`` where no signature can be read (some builtins), and for a
    callable written in C (a list's ``append``, a queue's ``put``): such a
    callable is taken, as it may fit, where reading a C method's text
    signature took 180 us, for a callback added to each task. What most
    callbacks are, a plain function, a method of one, an object whose class's
    ``__call__`` is one, or a ``functools.partial`` of these, is read from its
    code (~0.3 us); anything else (a decorated function, a class, an object
    whose ``__call__`` is a ``staticmethod`` or a ``classmethod``) through
    ``inspect``, which takes 30 us and more, imported only then, with such a
    ``__call__`` bound as a call binds it (:func:`as_called`).
    """
    if _fits_by_its_code(fn, count) or type(fn) in _NEVER_ASYNC:
        return None
    return _misfit_as_inspect_says(fn, count)


def _fits_by_its_code(fn: Any, count: int) -> bool:
    """Whether the code of ``fn`` says it takes ``count`` positional arguments; ``False`` where it does not say."""
    while type(fn) is functools.partial and not fn.keywords:
        count += len(fn.args)
        fn = fn.func
    if type(fn) is MethodType:
        fn, count = fn.__func__, count + 1
    elif (
        type(fn) is not FunctionType
        and type(call := type(fn).__call__) is FunctionType
        # Its class's own (as most are), or one it inherits: not a staticmethod's function, which takes no self.
        and (type(fn).__dict__.get("__call__") is call or _on_its_class(fn, "__call__") is call)
    ):
        fn, count = call, count + 1  # an object: its class's __call__, as calling it runs
    if type(fn) is not FunctionType or fn.__dict__:  # (a __wrapped__ or __signature__ says more: inspect)
        return False
    code = fn.__code__
    return (
        code.co_argcount - len(fn.__defaults__ or ()) <= count
        and (count <= code.co_argcount or bool(code.co_flags & _VARARGS))
        and len(fn.__kwdefaults__ or ()) == code.co_kwonlyargcount
    )


def _misfit_as_inspect_says(fn: Any, count: int) -> str | None:
    """:func:`call_misfit` through ``inspect.signature(fn, follow_wrapped=False).bind``.

    A decorated function is read by its wrapper, which a call runs first, not
    by the ``__wrapped__`` function whose signature ``functools.wraps`` copies:
    a wrapper may pass it arguments of its own (``f(ctx, *args)``) or drop some.
    """
    import inspect  # only here: importing the package does not pay for it

    try:
        signature = inspect.signature(as_called(fn), follow_wrapped=False)
    except (TypeError, ValueError):  # no signature to read
        return None
    try:
        signature.bind(*range(count))
    except TypeError as misfit:
        return str(misfit)
    return None


def _on_its_class(fn: Any, name: str) -> Any:
    """The attribute ``name`` of the class of ``fn``, unbound, where a call looks it up; ``None`` where absent.

    Read from the classes' ``__dict__`` along the MRO, as a call reads it (not
    the instance's own), and not by ``getattr``, which unwraps a
    ``staticmethod`` into a function that looks like one taking ``self``.
    """
    for klass in type(fn).__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    return None


def as_called(fn: Any) -> Any:
    """``fn`` for ``inspect`` to read: where it is an object, its class's ``__call__`` bound as a call binds it.

    ``inspect.signature`` reads an object by its class's ``__call__`` less the
    first parameter, taken for ``self``. A call binds that ``__call__`` by its
    kind: a ``staticmethod`` takes no ``self``, a ``classmethod`` takes the
    class, and a callable that is no descriptor (an object of its own) is
    called as it is. Read so, such an object was refused though calling it
    works. Bound here as a call binds it, behind partials and bound methods too;
    any other ``__call__`` (a function, a property) is left to ``inspect``.
    """
    if type(fn) is functools.partial:
        return functools.partial(as_called(fn.func), *fn.args, **fn.keywords)
    if type(fn) is MethodType:
        return MethodType(as_called(fn.__func__), fn.__self__)
    call = _on_its_class(fn, "__call__")
    if type(call) is staticmethod or type(call) is classmethod:
        return as_called(call.__get__(fn, type(fn)))
    if call is not None and not hasattr(type(call), "__get__"):
        return as_called(call)
    return fn


def refuse_unfitting_call(what: str, fn: Any, arguments: str, when: str) -> None:
    """Raise ``TypeError`` at the call that passed ``fn`` where it cannot take the arguments the library calls it with.

    The library calls a callback, a listener or a display later, on a thread
    of its own, where a ``TypeError`` of its arity came after the work (a
    map's first chunk), or only in the log. ``what`` names it (``"progress"``),
    ``arguments`` the arguments it gets (``"done, total"``; ``""`` for none, as
    a clock), and ``when`` when it is called (:func:`call_misfit` says why it
    does not fit).
    """
    count = arguments.count(",") + 1 if arguments else 0
    why = call_misfit(fn, count)
    if why is not None:
        takes = f"{count} positional argument{'s' if count > 1 else ''} ({arguments})" if count else "no arguments"
        raise TypeError(
            f"{what} must take {takes}, as it is called {when}; {getattr(fn, '__qualname__', fn)!s} cannot: {why}. "
            f"Pass a function of {f'({arguments})' if count else 'no arguments'}, as "
            f"lambda{f' {arguments}' if count else ''}: ..."
        )


def code_is_real(fn: Any) -> bool:
    """Whether ``inspect``'s predicates can read the code flags of ``fn``: it has no ``__code__``, or one whose ``co_flags`` are an int.

    Looked at past bound methods and ``functools.partial``, as ``inspect``
    looks. A mock made with ``spec=`` of a function passes for a function
    (``isinstance``) and its ``__code__`` is a mock too: a ``Mock``'s
    ``co_flags`` cannot be combined with a flag (``TypeError``), and a
    ``MagicMock``'s match every flag (an async generator function). Called, it
    makes its return value, as a plain function does: ask ``inspect`` nothing
    about it. ``AsyncMock`` (and a mock made with ``spec=`` of an ``async
    def`` function) sets real flags, ``CO_COROUTINE``: it is read, as one.
    """
    while isinstance(fn, (MethodType, functools.partial)):
        fn = fn.__func__ if isinstance(fn, MethodType) else fn.func
    code = getattr(fn, "__code__", None)
    return code is None or isinstance(getattr(code, "co_flags", None), int)


def check_task_timeout(timeout: Any) -> float | None:
    """A task's own timeout: ``None`` or seconds > 0; infinity (:func:`as_seconds`) means none."""
    if timeout is None:
        return None
    if not is_real(timeout):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    seconds = as_seconds(timeout)
    if math.isnan(seconds) or seconds <= 0:
        raise ValueError(f"timeout must be a number of seconds > 0 or None, got {shown(timeout)}")
    return None if math.isinf(seconds) else seconds


def check_priority(priority: Any) -> int:
    """Priorities are integers (:func:`as_integer`); higher runs first. Returns it as a plain int."""
    checked = as_integer(priority)
    if checked is None:
        raise TypeError(f"priority must be an int (higher runs first), got {priority!r}")
    return checked


def check_count(value: Any, name: str, least: int = 1, alternatives: str = "") -> int:
    """A count of threads, tasks or the like: an integer >= ``least`` (:func:`as_integer`); returns it as a plain int.

    ``alternatives`` ends the message with what else the caller accepts (``" or None"``).
    """
    count = as_integer(value)
    if count is None:
        raise TypeError(f"{name} must be an int >= {least}{alternatives}, got {value!r}")
    if count < least:
        raise ValueError(f"{name} must be an int >= {least}{alternatives}, got {shown(value)}")
    return count


def check_name(name: Any) -> None:
    """Refuse a ``name=`` of ``@parallel`` or ``@profiled`` that no record could be found by: no ``str``, or empty.

    Raises:
        TypeError: ``name`` is neither ``None`` nor a ``str``.
        ValueError: ``name`` is the empty string.
    """
    if name is None or (isinstance(name, str) and name):
        return
    wrong = f"name must be a non-empty str (name='fetch_page'), or left out for the function's __qualname__, got {name!r}"
    raise ValueError(wrong) if isinstance(name, str) else TypeError(wrong)
