"""The backends this Python cannot run, as test parameters: a name, how to make it so here, and what the refusal says.

The interpreter pool needs Python 3.14; Dask needs ``distributed``, hidden from
imports for the test. Each parameter is ``(backend, setup, reason)``, ``setup``
taking the test's ``monkeypatch``.
"""

from __future__ import annotations

import sys

import pytest


def without_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``distributed`` unimportable, as where it is not installed."""
    monkeypatch.setitem(sys.modules, "distributed", None)


UNRUNNABLE_BACKENDS = [
    pytest.param(
        "interpreter", lambda monkeypatch: None, "backend='interpreter' needs Python 3.14 or newer",
        marks=pytest.mark.skipif(sys.version_info >= (3, 14), reason="this Python has the interpreter pool"),
        id="interpreter",
    ),
    pytest.param("dask", without_distributed, 'pip install "makeparallel[dask]"', id="dask"),
]
