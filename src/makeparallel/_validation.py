"""Checks for user input, each raising at the call that made the mistake.

Messages state the rule, the value and, where it is not obvious, the fix.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "check_count",
    "check_priority",
    "check_seconds",
    "check_task_timeout",
    "check_wait_timeout",
]


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_wait_timeout(timeout: Any, name: str = "timeout") -> None:
    """A wait may last any number of seconds >= 0, or ``None`` (forever)."""
    if timeout is not None:
        _check_seconds(timeout, name, " or None")


def check_seconds(value: Any, name: str) -> None:
    """A wait that must end: any number of seconds >= 0, not ``None``."""
    _check_seconds(value, name, "")


def _check_seconds(value: Any, name: str, alternatives: str) -> None:
    """``value`` is a number of seconds >= 0; ``alternatives`` ends the message with what else is accepted."""
    if not _is_real(value):
        raise TypeError(f"{name} must be a number of seconds{alternatives}, got {value!r}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0{alternatives}, got {value!r}")


def check_task_timeout(timeout: Any) -> float | None:
    """A task's own timeout: ``None`` or seconds > 0; infinity means none."""
    if timeout is None:
        return None
    if not _is_real(timeout):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if math.isnan(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a number of seconds > 0 or None, got {timeout!r}")
    return None if math.isinf(timeout) else float(timeout)


def check_priority(priority: Any) -> int:
    """Priorities are plain ints; higher runs first."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"priority must be an int (higher runs first), got {priority!r}")
    return priority


def check_count(value: Any, name: str) -> int:
    """A count of threads, tasks or the like: an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value
