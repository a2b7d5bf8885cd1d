"""Amounts of memory as users write them: ``2147483648``, ``"2GiB"``, ``"512 MiB"``, ``"1.5GB"``.

Binary units (KiB, MiB, GiB, TiB: powers of 1024, IEC 80000-13) and decimal
ones (kB, MB, GB, TB: powers of 1000, SI) are both accepted, case aside, since
both are common and they differ by 7% at GiB. A bare ``K``, ``M``, ``G`` or
``T`` is refused: tools disagree on it (Docker reads ``2g`` as 2 GiB,
Kubernetes reads ``2G`` as 2 GB), so the message asks for one of the two.
"""

from __future__ import annotations

import re
from typing import Any

from ._validation import as_integer

__all__ = ["parse_byte_size"]

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_byte_size(value: Any, name: str) -> int:
    """``value`` in bytes: an int of bytes, or a string of a number and a unit.

    Args:
        value: an int >= 1 (bytes; any integer type, NumPy's too), or a string such as ``"2GiB"``, ``"512 MiB"``,
            ``"1.5GB"`` or ``"1000000"``; a fraction of a byte is dropped.
        name: the argument's name, for the error message.

    Returns:
        The number of bytes, at least 1.

    Raises:
        TypeError: ``value`` is neither an int nor a string (a float or a bool included).
        ValueError: the string is not a number and a known unit, or the size is under one byte.
    """
    if not isinstance(value, str):
        size = as_integer(value)
        if size is None:
            raise TypeError(
                f'{name} must be a number of bytes (an int) or a string such as "2GiB" or "512MB", got {value!r}'
            )
    else:
        match = _SIZE.fullmatch(value)
        unit = match.group(2).lower() if match else ""
        if match is not None and unit in ("k", "m", "g", "t"):
            raise ValueError(
                f"{name}: the unit of {value!r} is ambiguous; write {unit.upper()}iB for powers of 1024 "
                f"or {unit.upper()}B for powers of 1000"
            )
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"{name} must be bytes, or a number with one of the units B, kB, MB, GB, TB (powers of 1000) "
                f'or KiB, MiB, GiB, TiB (powers of 1024), such as "2GiB" or "1.5GB"; got {value!r}'
            )
        from decimal import Decimal  # exact for "4.35MB"; loaded only for a string

        size = int(Decimal(match.group(1)) * _UNITS[unit])
    if size < 1:
        raise ValueError(f"{name} must be at least 1 byte, got {value!r}")
    return size
