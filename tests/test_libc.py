"""Calling a C library function without ctypes (``_backends/_libc``), and its fallback to ctypes."""

from __future__ import annotations

import os
import sys

import pytest

from makeparallel._backends import _libc

pytestmark = [pytest.mark.timeout(30), pytest.mark.skipif(sys.platform == "win32", reason="POSIX libc")]


def test_a_libc_function_is_called_with_its_ints_and_returns_its_int() -> None:
    assert _libc.libc_call("getpid")() == os.getpid()
    absolute = _libc.libc_call("abs", -7)
    assert absolute() == 7
    assert absolute() == 7  # bound once, called again


def test_none_is_passed_as_null() -> None:
    assert _libc.libc_call("fflush", None)() == 0  # fflush(NULL): every stream


def test_a_function_the_program_lacks_raises_oserror() -> None:
    with pytest.raises(OSError, match="no_such_function"):
        _libc.libc_call("no_such_function")


def test_without_ctypes_internals_it_falls_back_to_ctypes(monkeypatch: pytest.MonkeyPatch) -> None:
    import _ctypes

    monkeypatch.delattr(_ctypes, "call_function")
    absolute = _libc.libc_call("abs", -7)
    assert type(absolute.func).__module__ == "ctypes"  # type: ignore[attr-defined]
    assert absolute() == 7
