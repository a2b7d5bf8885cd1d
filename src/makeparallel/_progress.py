"""Progress displays for batches: a tqdm bar, a callable of yours, or nothing.

``progress=True`` draws a bar with ``tqdm.auto`` (a widget in Jupyter, text in a
terminal: items done, rate, ETA); ``progress={...}`` draws one with those tqdm
options (``desc``, ``unit``, ``leave``, ``position``...); ``progress=fn`` calls
``fn(done, total)`` on the collecting thread after each step (``total`` is
``None`` when the input has no length). tqdm is an optional extra, imported only
when a bar is asked for.

A bar's ``total`` is the length of the input, counted by the map or gather. An
input with no length (a generator) has none, so the bar shows a count and a
rate but no end or ETA: ``progress={"total": n}`` gives it one. That ``n`` is
the bar's alone: it is never taken for the input's length (the map's chunk
sizing keeps reading to the input's end, whatever it says), and where the
input has a length it must agree with it, since the bar would otherwise stop
short of, or run past, what the map does.

One key of the dict is ours, not tqdm's: ``"redirect_logging": True`` routes
logging through ``tqdm.contrib.logging.logging_redirect_tqdm`` while the bar is
shown, so that log lines print above the bar instead of tearing it. That swaps
the root logger's console handlers (``StreamHandler`` to stdout or stderr) for
one that writes through tqdm, and puts them back when the bar closes: in a server,
where other threads log meanwhile, leave it off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, Union

from ._validation import (
    as_integer,
    check_count,
    refuse_unfitting_call,
    unused_call_kind,
)

__all__ = ["GATHERED", "Progress", "ProgressOption", "check_progress", "open_progress"]

ProgressOption = Union[bool, Mapping[str, Any], Callable[[int, Union[int, None]], object], None]

REDIRECT_LOGGING = "redirect_logging"
_TOTAL = "total"
_ITERABLE = "iterable"  # the library feeds the bar itself

# What a progress total that disagrees with the input's length is counted against, in its error.
_MAP_INPUT = "items of the input, which has a length; a total is for an input with none (a generator): leave it out"
GATHERED = "handles gathered: gather counts them itself; leave total out"


class Progress:
    """Counts items done and shows the count; close it however the batch ends."""

    __slots__ = ("_bar", "_callback", "_cleanup", "done", "total")

    def __init__(
        self,
        total: int | None,
        bar: Any = None,
        callback: Callable[..., object] | None = None,
        cleanup: contextlib.ExitStack | None = None,
    ) -> None:
        self.done = 0
        self.total = total
        self._bar = bar
        self._callback = callback
        self._cleanup = cleanup

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif self._callback is not None:
            self._callback(self.done, self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._cleanup is not None:  # after the bar: its last line is drawn first
            self._cleanup.close()


def check_progress(option: ProgressOption, length: int | None = None, counted: str = _MAP_INPUT) -> None:
    """Raise at the call for a bad ``progress=``, or for a bar without tqdm.

    Args:
        option: what ``progress=`` was given.
        length: the number of items (or handles) in the input, ``None`` where it has no length.
        counted: what ``length`` counts, for the error of a ``total`` that disagrees with it.

    Raises:
        ImportError: a bar is asked for and tqdm is not installed.
        TypeError: ``option`` is neither a bool, a mapping of tqdm options nor a
            callable; or the mapping names an argument tqdm does not take, or
            ``iterable``, which the library feeds itself, or a ``total`` that is
            not an int or ``None``; or the callable is a class (``tqdm`` itself),
            an ``async def`` function (a coroutine or an async generator
            function) or a generator function, or a ``functools.partial`` of
            one, none of which displays anything when called; or the
            callable cannot take ``(done, total)`` (its signature says so;
            one written in C, or that has none, is taken).
        ValueError: the mapping's ``total`` is negative, or the input has a
            length (``length`` is not ``None``) and ``total`` is another.
    """
    if option is True:
        _tqdm()
    elif isinstance(option, Mapping):
        if _ITERABLE in option:
            raise TypeError(
                f"progress options may not set {_ITERABLE}: the map or gather feeds the bar "
                f"itself; got {dict(option)!r}"
            )
        if _TOTAL in option:
            _check_total(option[_TOTAL], length, counted)
        unknown = sorted(map(repr, set(option) - _tqdm_options() - {REDIRECT_LOGGING}))
        if unknown:
            raise TypeError(
                f"unknown progress option {', '.join(unknown)}: the keys are tqdm's "
                f"arguments (desc, unit, leave, position, ...) and {REDIRECT_LOGGING!r}"
            )
    elif option is None or option is False:
        return
    elif not callable(option):
        raise TypeError(
            "progress must be True, False, a dict of tqdm options or a callable(done, total), "
            f"got {option!r}"
        )
    elif (made := unused_call_kind(option)) is not None:
        kind, what = made
        # tqdm's own class is the likely class (tqdm.contrib.concurrent takes tqdm_class=): called
        # after each chunk, once the work was done, it would make a bar per chunk, or fail there.
        raise TypeError(
            f"progress={getattr(option, '__qualname__', option)} is {kind}: called after each "
            f"chunk, it would only make {what}, and show nothing. Pass a plain "
            f"function(done, total); it runs on the thread that called the map, or gather; "
            'for a tqdm bar pass progress=True, or a dict of tqdm options (progress={"desc": "resizing"})'
        )
    else:
        refuse_unfitting_call("progress", option, "done, total", "after each chunk of a map, or each task gathered")


def open_progress(
    option: ProgressOption, length: int | None, description: str, counted: str = _MAP_INPUT
) -> Progress | None:
    """The display ``option`` asks for, or ``None`` when it asks for none.

    Its total is the mapping's ``total`` where it gives one, else ``length``
    (the input's, ``None`` where it has none).

    Raises:
        ImportError, TypeError, ValueError: as :func:`check_progress`.
    """
    check_progress(option, length, counted)
    if option is True:
        option = {}
    total = length
    if isinstance(option, Mapping):
        tqdm_options = {"desc": description, "unit": "item", **option}
        if _TOTAL in tqdm_options:  # checked: it agrees with length, or the input has none
            given = tqdm_options.pop(_TOTAL)
            total = None if given is None else as_integer(given)
        redirect = bool(tqdm_options.pop(REDIRECT_LOGGING, False))
        tqdm_class = _tqdm()
        cleanup = contextlib.ExitStack()
        if redirect:
            from tqdm.contrib.logging import logging_redirect_tqdm  # type: ignore[import-untyped, unused-ignore]

            cleanup.enter_context(logging_redirect_tqdm(tqdm_class=tqdm_class))
        try:
            bar = tqdm_class(total=total, **tqdm_options)
        except BaseException:
            cleanup.close()
            raise
        return Progress(total, bar=bar, cleanup=cleanup)
    if callable(option):
        return Progress(total, callback=option)
    return None


def _check_total(total: Any, length: int | None, counted: str) -> None:
    """Raise unless ``total`` (a progress mapping's) is an int >= 0 or ``None`` that agrees with ``length``, where known.

    Raises:
        TypeError: ``total`` is neither an int (NumPy's too) nor ``None``.
        ValueError: ``total`` is negative, or differs from ``length``.
    """
    if total is not None:
        total = check_count(total, "progress total", 0, " or None")
    if length is not None and total != length:
        raise ValueError(f"progress total={total!r} disagrees with the {length} {counted}")


def _tqdm_options() -> set[str]:
    """The argument names every tqdm bar takes (those of ``tqdm.std.tqdm``)."""
    import inspect  # only here: the first gather, wait or map of a program does not pay for it

    _tqdm()  # the ImportError naming the extra, if tqdm is missing
    from tqdm.std import tqdm  # type: ignore[import-untyped, unused-ignore]

    parameters = inspect.signature(tqdm.__init__).parameters.values()
    return {p.name for p in parameters if p.kind == p.POSITIONAL_OR_KEYWORD} - {"self"}


def _tqdm() -> Any:
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped, unused-ignore]
    except ImportError as error:
        raise ImportError(
            "a progress bar is drawn with tqdm, which is not installed: "
            'pip install "makeparallel[progress]" (or pass progress=callable(done, total))'
        ) from error
    return tqdm
