"""Amounts of memory as users write them: ints of bytes, or a number and a binary or decimal unit."""

from __future__ import annotations

from typing import Any

import pytest

from makeparallel._byte_sizes import parse_byte_size


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (1, 1),
        (2_147_483_648, 2_147_483_648),
        ("1000", 1000),
        ("512B", 512),
        ("2GiB", 2 * 1024**3),
        ("512MiB", 512 * 1024**2),
        ("512 MiB", 512 * 1024**2),
        (" 2 gib ", 2 * 1024**3),
        ("1.5GB", 1_500_000_000),
        ("4.35MB", 4_350_000),  # exact: no float rounding to 4349999
        ("1.5KiB", 1536),
        (".5kib", 512),
        ("10kB", 10_000),
        ("1TiB", 1024**4),
        ("3tb", 3 * 1000**4),
        ("1.0000001KB", 1000),  # a fraction of a byte is dropped
    ],
)
def test_sizes_parse_to_bytes(value: Any, size: int) -> None:
    assert parse_byte_size(value, "limit") == size


@pytest.mark.parametrize("value", ["2G", "2g", "512M", "10k", "1T"])
def test_a_bare_unit_letter_is_refused_as_ambiguous(value: str) -> None:
    with pytest.raises(ValueError, match=rf"limit: the unit of '{value}' is ambiguous; write .iB .* or .B "):
        parse_byte_size(value, "limit")


@pytest.mark.parametrize("value", ["", "GiB", "lots", "1e9", "-1GB", "2 GiB of RAM", "1,5GB", "2PiB", "nan"])
def test_text_that_is_not_a_number_and_a_unit_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match=r"limit must be bytes, or a number with one of the units B, kB, MB, GB, TB") as raised:
        parse_byte_size(value, "limit")
    assert repr(value) in str(raised.value)


@pytest.mark.parametrize("value", [0, -1, "0", "0GiB", "0.1B"])
def test_sizes_under_one_byte_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match=rf"limit must be at least 1 byte, got {value!r}"):
        parse_byte_size(value, "limit")


@pytest.mark.parametrize("value", [1.5e9, True, None, b"2GiB", [1]])
def test_other_types_are_refused(value: Any) -> None:
    with pytest.raises(TypeError, match=r'limit must be a number of bytes \(an int\) or a string such as "2GiB"') as raised:
        parse_byte_size(value, "limit")
    assert repr(value) in str(raised.value)
