"""Tasks that raise a chained error, for the tests of errors sent back from other processes.

The process backend's and the executors' tests send the same three, by name: a
worker imports this module, not a test module (with pytest and what it imports).
"""

from __future__ import annotations


def explicit_cause() -> None:
    try:
        {}["id"]
    except KeyError as error:
        raise ValueError("bad row") from error


def implicit_context() -> None:
    try:
        {}["id"]
    except KeyError:
        raise ValueError("while handling")


def suppressed_context() -> None:
    try:
        {}["id"]
    except KeyError:
        raise ValueError("no context shown") from None
