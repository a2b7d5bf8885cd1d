"""Progress displays for batches: a tqdm bar, a callable of yours, or nothing.

``progress=True`` draws a tqdm bar (items done, rate, ETA); ``progress=fn`` calls
``fn(done, total)`` on the collecting thread after each step (``total`` is
``None`` when the input has no length). tqdm is an optional extra, imported only
when a bar is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

__all__ = ["Progress", "ProgressOption", "check_progress", "open_progress"]

ProgressOption = Union[bool, Callable[[int, Union[int, None]], object], None]


class Progress:
    """Counts items done and shows the count; close it however the batch ends."""

    __slots__ = ("_bar", "_callback", "done", "total")

    def __init__(self, total: int | None, bar: Any = None, callback: Callable[..., object] | None = None) -> None:
        self.done = 0
        self.total = total
        self._bar = bar
        self._callback = callback

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif self._callback is not None:
            self._callback(self.done, self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def check_progress(option: ProgressOption) -> None:
    """Raise at the call for a bad ``progress=``, or for a bar without tqdm.

    Raises:
        ImportError: ``progress=True`` and tqdm is not installed.
        TypeError: ``option`` is neither a bool nor a callable.
    """
    if option is True:
        _tqdm()
    elif not (option is None or option is False or callable(option)):
        raise TypeError(f"progress must be True, False or a callable(done, total), got {option!r}")


def open_progress(option: ProgressOption, total: int | None, description: str) -> Progress | None:
    """The display ``option`` asks for, or ``None`` when it asks for none."""
    check_progress(option)
    if option is True:
        return Progress(total, bar=_tqdm()(total=total, desc=description, unit="item"))
    if callable(option):
        return Progress(total, callback=option)
    return None


def _tqdm() -> Any:
    try:
        from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]
    except ImportError as error:
        raise ImportError(
            'progress=True draws a bar with tqdm, which is not installed: '
            'pip install "makeparallel[progress]" (or pass progress=callable(done, total))'
        ) from error
    return tqdm
